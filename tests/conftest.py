"""Shared fixtures: images made on the fly by random generators of known architectures, a tiny trained model."""

import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

HELD_OUT_SEED = "seed2"


def write_manifest(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)


@pytest.fixture(scope="session")
def gan_images(tmp_path_factory):
    """Three architectures x seeds 0,1,2 + real photo crops; train.csv holds seeds 0-1, test.csv seed 2."""
    from tfdnadet.zoo.testdata import make_test_dataset

    root = tmp_path_factory.mktemp("gan_images")
    make_test_dataset(root, architectures=("progan", "mmdgan", "dcgan"), seeds=(0, 1, 2), images_per_model=24, image_size=32, real_images=48)
    train, test = [], []
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".png"):
                continue
            relative = os.path.relpath(os.path.join(dirpath, name), root)
            label = relative.split(os.sep)[0]
            held_out = HELD_OUT_SEED in relative.split(os.sep) if label != "real" else int(name[:-4]) % 4 == 0
            (test if held_out else train).append((relative, label))
    write_manifest(root / "train.csv", train)
    write_manifest(root / "test.csv", test)
    return {"root": str(root), "train": str(root / "train.csv"), "test": str(root / "test.csv")}


@pytest.fixture(scope="session")
def tiny_config():
    from tfdnadet.config import load_config

    # float32: tests compare the trained model's outputs with its float32 SavedModel exactly (test_precision covers auto)
    return load_config("tiny", {"train.epochs": 4, "train.precision": "float32"})


@pytest.fixture(scope="session")
def trained_run(gan_images, tiny_config, tmp_path_factory):
    """A tiny stage-2 run on seeds 0-1 of the three architectures + real."""
    from tfdnadet.training.stage2 import train_stage2

    run_dir = str(tmp_path_factory.mktemp("runs") / "stage2")
    return train_stage2(gan_images["train"], run_dir, tiny_config, verbose=0)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The `tiny` mini GAN zoo, built once per session in two processes (a fifth faster on 2 cores); returns its
    manifest (with `root`)."""
    from tfdnadet.zoo.build import build_zoo

    return build_zoo(str(tmp_path_factory.mktemp("zoo") / "tiny"), "tiny", workers=2)


def run_cli(args, monkeypatch, capsys):
    """Run the tfdnadet command in-process; returns (exit code, stdout, stderr)."""
    from tfdnadet import cli

    monkeypatch.setattr(sys, "argv", ["tfdnadet", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def same_random_state():
    """Each test starts from one random state whatever its worker ran before (tests are spread over workers)."""
    import keras

    keras.utils.set_random_seed(0)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): one worker per core, at most four (each holds TensorFlow and a model in memory)."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """With `--dist loadgroup` (pytest.ini) a module's tests share a worker, so its module fixtures are built once,
    and every test of the tiny zoo shares one, so the zoo (the suite's longest setup) is built once."""
    for item in items:
        group = "tiny_zoo" if "tiny_zoo" in item.fixturenames else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
