"""The official DNA-Det annotation layout: {mode}_test/annotations/*.txt with ./dataset/... paths."""

import os
import shutil

import pytest

from conftest import run_cli
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.splits import annotation_splits, evaluate_splits, is_annotation_folder
from tfdnadet.models.model_dir import load_detector

RELEASE_CLASSES = ["real", "progan", "mmdgan", "dcgan"]  # the release's label order, not the model's


@pytest.fixture(scope="module")
def release(gan_images, tmp_path_factory):
    """A release-like tree: images under dataset/GANs, annotation paths written from the release root."""
    root = tmp_path_factory.mktemp("release")
    shutil.copytree(gan_images["root"], root / "dataset" / "GANs")
    annotations = root / "dataset" / "zoo_test" / "annotations"
    annotations.mkdir(parents=True)

    def lines(arch, seed):
        folder = os.path.join("dataset", "GANs", arch, f"seed{seed}") if arch != "real" else os.path.join("dataset", "GANs", "real")
        names = sorted(os.listdir(root / folder))[:8]
        return [f"./{folder}/{name}\t{RELEASE_CLASSES.index(arch)}\n" for name in names]

    (annotations / "zoo_test.txt").write_text("".join(line for a in RELEASE_CLASSES for line in lines(a, 0)))
    (annotations / "zoo_test_cross_seed.txt").write_text("".join(line for a in ("progan", "mmdgan", "dcgan") for line in lines(a, 2)))
    return root, annotations


def test_annotation_folder_is_read_as_table_2_splits(release, trained_run):
    root, annotations = release
    assert is_annotation_folder(str(annotations)) and not is_annotation_folder(str(root / "dataset" / "GANs"))
    splits = annotation_splits(str(annotations))
    assert list(splits) == ["closed-set", "cross-seed"]
    results = evaluate_splits(load_detector(trained_run.model_dir), splits, class_names=RELEASE_CLASSES)
    assert results["closed-set"]["count"] == 32 and results["cross-seed"]["count"] == 24
    # Labels are matched by name: the release's "real" (label 0) is the model's class "real".
    assert sum(results["closed-set"]["confusion_matrix"][3]) == 8
    with pytest.raises(TfdnadetError, match="No annotation"):
        annotation_splits(str(root))


def test_evaluate_command_prints_the_split_table(release, trained_run, monkeypatch, capsys):
    _, annotations = release
    code, out, err = run_cli(["evaluate", trained_run.model_dir, "--data", annotations, "--classes", ",".join(RELEASE_CLASSES)], monkeypatch, capsys)
    assert code == 0, err
    assert "closed-set" in out and "cross-seed" in out and "macro-F1" in out
