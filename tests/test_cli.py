"""The command line as a user meets it: help, tables, JSON, files written, one-line errors and exit codes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import run_cli


def test_help_lists_the_commands(monkeypatch, capsys):
    code, out, _ = run_cli(["--help"], monkeypatch, capsys)
    assert code == 0
    for command in ("train-stage2", "predict", "evaluate", "quickstart"):
        assert command in out


def test_predict_table_and_json(trained_run, gan_images, monkeypatch, capsys):
    image = os.path.join(gan_images["root"], "progan", "seed2", "0000.png")
    code, out, _ = run_cli(["predict", trained_run.model_dir, image], monkeypatch, capsys)
    assert code == 0 and "seed2/0000.png" in out and "top-3" in out
    folder = os.path.join(gan_images["root"], "dcgan", "seed2")
    code, out, _ = run_cli(["predict", trained_run.model_dir, folder, "--json"], monkeypatch, capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 24
    assert set(rows[0]["probabilities"]) == {"dcgan", "mmdgan", "progan", "real"}
    assert abs(sum(rows[0]["probabilities"].values()) - 1.0) < 1e-4
    assert rows[0]["label"] == rows[0]["top"][0]["label"]


def test_evaluate_writes_json_and_confusion_png(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["evaluate", trained_run.model_dir, "--data", gan_images["test"], "--out", tmp_path / "rep"], monkeypatch, capsys)
    assert code == 0, err
    assert "accuracy" in out and "confusion matrix" in out
    result = json.load(open(tmp_path / "rep" / "evaluation.json"))
    assert result["count"] == 84 and 0 <= result["accuracy"] <= 1
    assert np.asarray(Image.open(tmp_path / "rep" / "evaluation_confusion.png")).shape[2] in (3, 4)


def test_bad_inputs_give_one_line_errors(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small)
    good = os.path.join(gan_images["root"], "real", "0000.png")
    code, out, err = run_cli(["predict", trained_run.model_dir, good, corrupt, small, tmp_path / "missing.png"], monkeypatch, capsys)
    assert code == 3
    assert "real/0000.png" in out
    lines = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(lines) == 3 and "smaller than a patch" in err and "not a readable image" in err and "no such file" in err

    code, _, err = run_cli(["predict", tmp_path / "no-model", good], monkeypatch, capsys)
    assert code == 1 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    data = tmp_path / "data"
    (data / "empty_class").mkdir(parents=True)
    (data / "real").mkdir()
    shutil.copy(good, data / "real" / "a.png")
    code, _, err = run_cli(["train-stage2", "--data", data, "--out", tmp_path / "run", "--config", "tiny"], monkeypatch, capsys)
    assert code == 1 and "empty_class" in err and len(err.strip().splitlines()) == 1

    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("train:\n  epochz: 3\n")
    code, _, err = run_cli(["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "r2", "--config", bad_config], monkeypatch, capsys)
    assert code == 1 and "train.epochz" in err and len(err.strip().splitlines()) == 1

    code, _, err = run_cli(["evaluate", trained_run.model_dir, "--data", data], monkeypatch, capsys)
    assert code == 1 and "empty_class" in err


def test_class_too_small_for_patches_is_named(gan_images, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    for cls, size in (("real", 32), ("tiny_gan", 8)):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(data / cls / f"{i}.png")
    code, _, err = run_cli(["train-stage2", "--data", data, "--out", tmp_path / "run", "--config", "tiny"], monkeypatch, capsys)
    assert code == 1 and "tiny_gan" in err and "Traceback" not in err


def test_console_script_runs_as_a_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tfdnadet.cli", "predict", str(tmp_path / "nope"), "x.png"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "error: Model directory not found" in done.stderr and "Traceback" not in done.stderr
