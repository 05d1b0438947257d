"""The Table 2 cross-test protocol on the tiny zoo, through the library and `evaluate --protocol`, and the quick start."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from tfdnadet import quickstart
from tfdnadet.config import load_config
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.protocol import evaluate_protocol, protocol_summary, write_protocol, zoo_test_splits
from tfdnadet.models.model_dir import load_detector
from tfdnadet.training.stage2 import train_stage2
from tfdnadet.zoo.build import TEST_SPLITS

ZOO_SIZES = {"data.base_size": 32, "data.input_size": 64, "data.patch_size": 16}


@pytest.fixture(scope="module")
def zoo_model(tiny_zoo, tmp_path_factory):
    """A tiny stage-2 model trained on the zoo's train split."""
    config = load_config("tiny", {**ZOO_SIZES, "train.epochs": 2, "train.steps_per_epoch": 8})
    run_dir = str(tmp_path_factory.mktemp("protocol") / "stage2")
    return train_stage2(os.path.join(tiny_zoo["root"], "train.csv"), run_dir, config, verbose=0).model_dir


def test_protocol_scores_every_test_split(tiny_zoo, zoo_model, tmp_path):
    results = evaluate_protocol(load_detector(zoo_model), tiny_zoo["root"])
    assert list(results) == list(TEST_SPLITS)
    for split, metrics in results.items():
        assert metrics["count"] == tiny_zoo["splits"][split]["images"]
        assert 0.0 <= metrics["macro_f1"] <= 1.0
        matrix = np.asarray(metrics["confusion_matrix"])
        assert matrix.sum() == metrics["count"]
        assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        # Rows of classes a split does not hold stay empty (no real images in cross-seed, for example).
        names = metrics["class_names"]
        held = set(tiny_zoo["splits"][split]["classes"])
        assert {names[i] for i in np.flatnonzero(matrix.sum(axis=1))} == held
    files = write_protocol(results, str(tmp_path / "out"), zoo_model, os.path.join(tiny_zoo["root"], "zoo.json"))
    with open(files["protocol_json"]) as f:
        summary = json.load(f)
    assert summary["splits"] == json.loads(json.dumps(protocol_summary(results)))
    for split in TEST_SPLITS:
        png = Image.open(files[f"{split}_confusion_png"])
        assert png.format == "PNG" and png.size[0] > 200
        with open(tmp_path / "out" / f"{split}.json") as f:
            assert json.load(f)["count"] == results[split]["count"]


def test_evaluate_protocol_command(tiny_zoo, zoo_model, tmp_path, monkeypatch, capsys):
    zoo_json = os.path.join(tiny_zoo["root"], "zoo.json")
    code, out, err = run_cli(["evaluate", zoo_model, "--protocol", zoo_json, "--out", tmp_path / "eval"], monkeypatch, capsys)
    assert code == 0, err
    for split in TEST_SPLITS:
        assert split in out
        assert (tmp_path / "eval" / f"{split}_confusion.png").is_file()
    assert "protocol.json" in err and (tmp_path / "eval" / "protocol.json").is_file()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--protocol", "{missing}"], 1, "No zoo manifest"),
        ([], 2, "either --data DATA or --protocol"),
        (["--protocol", "{zoo}", "--data", "{zoo}"], 2, "either --data DATA or --protocol"),
        (["--protocol", "{zoo}", "--report", "{out}"], 1, "--report cannot be combined with --protocol"),
        (["--protocol", "{zoo}", "--attack", "jpeg", "--report", "{out}"], 1, "--report cannot be combined with --protocol"),
        (["--protocol", "{zoo}", "--open-set", "--attack", "jpeg"], 1, "--attack cannot be combined with --open-set"),
        (["--protocol", "{zoo}", "--classes", "a,b"], 1, "--classes cannot be combined with --protocol"),
        (["--protocol", "{zoo}", "--tsne-samples", "50"], 2, "--run and --tsne-samples go with --report DIR"),
        (["--protocol", "{zoo}", "--unknown", "dcgan"], 1, "--unknown and --score go with --open-set"),
    ],
)
def test_evaluate_protocol_errors(args, code, message, tiny_zoo, zoo_model, tmp_path, monkeypatch, capsys):
    paths = {"missing": str(tmp_path / "nowhere" / "zoo.json"), "zoo": os.path.join(tiny_zoo["root"], "zoo.json"), "out": str(tmp_path / "r")}
    args = [a.format(**paths) for a in args]
    result, _, err = run_cli(["evaluate", zoo_model, *args], monkeypatch, capsys)
    assert result == code and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_evaluate_protocol_under_attack_has_a_row_per_test_split(tiny_zoo, zoo_model, tmp_path, monkeypatch, capsys):
    """--attack with --protocol attacks every test split (before, the attacks were silently left out)."""
    zoo_json = os.path.join(tiny_zoo["root"], "zoo.json")
    code, out, err = run_cli(["evaluate", zoo_model, "--protocol", zoo_json, "--attack", "jpeg", "--out", tmp_path / "r"], monkeypatch, capsys)
    assert code == 0, err
    with open(tmp_path / "r" / "robustness.json") as f:
        table = json.load(f)
    assert table["columns"] == ["clean", "jpeg"] and list(table["rows"]) == list(TEST_SPLITS)
    clean = evaluate_protocol(load_detector(zoo_model), tiny_zoo["root"])
    for split, row in table["rows"].items():
        assert row["count"] == tiny_zoo["splits"][split]["images"]
        assert row["scores"]["clean"]["accuracy"] == pytest.approx(clean[split]["accuracy"])
        assert 0.0 <= row["scores"]["jpeg"]["accuracy"] <= 1.0
        assert split in out
    assert "JPEG" in out


def test_a_zoo_without_test_splits_is_an_error(tiny_zoo, tmp_path):
    with open(os.path.join(tiny_zoo["root"], "zoo.json")) as f:
        manifest = json.load(f)
    manifest["splits"] = {"train": manifest["splits"]["train"]}
    (tmp_path / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(TfdnadetError, match="has no test split"):
        zoo_test_splits(str(tmp_path))


def test_quickstart_end_to_end_and_again(tiny_zoo, tmp_path, monkeypatch, capsys):
    """The README's first command on the tiny zoo (already built) with shortened training runs; the commands it
    suggests next work as printed."""
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "qs"
    shutil.copytree(tiny_zoo["root"], out_dir / "zoo")
    monkeypatch.setattr(quickstart, "_STAGE1_SETTINGS", {"stage1.epochs": 1, "train.steps_per_epoch": 2, "stage1.crops": 64, "stage1.transforms": {"jpeg": [30, 90], "noise": [25]}})
    monkeypatch.setattr(quickstart, "_STAGE2_SETTINGS", {"train.epochs": 1, "train.steps_per_epoch": 4})
    code, out, err = run_cli(["quickstart", "--out", "qs"], monkeypatch, capsys)
    assert code == 0, err
    headers = [line for line in err.splitlines() if re.match(r"\d/6 ", line)]
    assert [h.split()[0] for h in headers] == [f"{n}/6" for n in range(1, 7)] and "done before" in headers[0]
    for split in TEST_SPLITS:
        assert split in out
    model_dir = out_dir / "stage2" / "model"
    assert os.path.join("qs", "zoo", "preview.png") in out and str(tmp_path) not in out  # paths relative to here
    assert re.search(r"stage 1 \(pretraining on \d+ image transformations\): validation accuracy [01]\.\d{3} after 1 epochs", out)
    assert (out_dir / "evaluation" / "protocol.json").is_file()
    assert (model_dir / "heads" / quickstart.ADDED_HEAD / "head.json").is_file()
    assert (out_dir / "savedmodels" / quickstart.EXPORT_NAME / "1" / "saved_model.pb").is_file()
    suggested = [line.split()[1:] for line in out.splitlines() if line.startswith("  tfdnadet ")]
    assert [args[0] for args in suggested] == ["predict", "evaluate", "gradcam", "heads", "export"]
    for args in (suggested[0], suggested[3], suggested[4]):
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, (args, err)
    stamp = os.stat(model_dir / "detector.json").st_mtime_ns
    code, again, err = run_cli(["quickstart", "--out", "qs"], monkeypatch, capsys)
    assert code == 0, err
    assert os.stat(model_dir / "detector.json").st_mtime_ns == stamp  # nothing trained twice
    assert again == out
