"""The command line as a user meets it: help, tables, JSON, files written, one-line errors and exit codes."""

import json
import re
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import run_cli
from tfdnadet.config import load_config
from tfdnadet.models.model_dir import load_detector


def test_help_lists_the_commands_in_pipeline_order(monkeypatch, capsys):
    code, out, _ = run_cli(["--help"], monkeypatch, capsys)
    assert code == 0
    order = ["train-stage1", "train-stage2", "add-head", "heads", "calibrate-rejection", "predict", "evaluate", "gradcam",
             "fingerprint", "export", "import-torch", "zoo", "quickstart"]  # fmt: skip
    listed = [line.strip("│ ").split()[0] for line in out.splitlines() if line.strip("│ ").split()[:1] and line.strip("│ ").split()[0] in order]
    assert listed == order
    from tfdnadet.cli import PIPELINE_ORDER, app

    commands = {command.name for command in app.registered_commands} | {group.name for group in app.registered_groups}
    assert commands == set(PIPELINE_ORDER)  # a new command gets its place in the pipeline order


def test_predict_table_and_json(trained_run, gan_images, monkeypatch, capsys):
    image = os.path.join(gan_images["root"], "progan", "seed2", "0000.png")
    code, out, _ = run_cli(["predict", trained_run.model_dir, image], monkeypatch, capsys)
    assert code == 0 and image in out and "runners-up" in out  # a pipe gets whole paths
    monkeypatch.setenv("TFDNADET_MODEL", trained_run.model_dir)  # MODEL left out: the default model
    code, again, _ = run_cli(["predict", image], monkeypatch, capsys)
    assert code == 0 and again == out
    other = os.path.join(gan_images["root"], "dcgan", "seed2", "0001.png")
    code, both, _ = run_cli(["predict", image, other], monkeypatch, capsys)
    assert code == 0 and image in both and other in both
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


def test_predict_table_fits_80_columns_trimming_file_names_from_the_left(trained_run, gan_images):
    from rich.console import Console

    from tfdnadet import cli
    from tfdnadet.inference import attribute

    folder = os.path.join(gan_images["root"], "progan", "seed2")
    results, _ = attribute(load_detector(trained_run.model_dir), [folder])
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(cli._attribution_table(results, width=80))
    lines = console.export_text().splitlines()
    assert len(lines) == len(results) + 1  # a header, then one line per image: nothing wraps
    assert all(len(line) <= 80 for line in lines)
    for line, result in zip(lines[1:], results):
        shown = line.split()[0]
        assert shown.startswith("…") and result.path.endswith(shown[1:]) and shown.endswith("seed2/" + os.path.basename(result.path))
        assert f"{result.label} {result.probability:.2f}" in line


def test_model_argument_comes_first_everywhere(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TFDNADET_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./model here
    code, _, err = run_cli(["predict", tmp_path / "missing.png"], monkeypatch, capsys)
    assert code == 2 and "give MODEL and then image files" in err
    code, _, err = run_cli(["heads", "remove", "x"], monkeypatch, capsys)
    assert code == 1 and "Model directory not found: model" in err
    code, out, _ = run_cli(["heads", "list", trained_run.model_dir, "--json"], monkeypatch, capsys)
    assert code == 0 and [row["name"] for row in json.loads(out)] == ["multiclass"]


def test_set_values_are_parsed_in_config(monkeypatch, capsys, tmp_path):
    from tfdnadet.config import parse_settings

    assert parse_settings(["train.epochs=3", "data.class_names=[a, b]", "train.learning_rate=1e-4"]) == {
        "train.epochs": 3, "data.class_names": ["a", "b"], "train.learning_rate": 1e-4
    }
    for bad in ("epochs=3", "train.epochs", ".x=1", "train.=1"):
        code, _, err = run_cli(["train-stage1", "--out", tmp_path / "run", "--set", bad], monkeypatch, capsys)
        assert code == 1 and "--set expects SECTION.KEY=VALUE" in err and len(err.strip().splitlines()) == 1


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
    code, out, err = run_cli(["predict", trained_run.model_dir, tmp_path / "missing.png"], monkeypatch, capsys)
    assert code == 3 and out == "" and "no such file" in err  # no empty table

    code, _, err = run_cli(["predict", tmp_path / "no-model", good], monkeypatch, capsys)
    assert code == 1 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_cli(["predict", trained_run.run_dir, good], monkeypatch, capsys)  # the run, not its model
    assert code == 1 and err.strip().splitlines() == [f"error: {trained_run.run_dir} is not a tfdnadet model directory (no detector.json; a training run keeps its model in RUN/model)."]

    data = tmp_path / "data"
    (data / "empty_class").mkdir(parents=True)
    (data / "real").mkdir()
    shutil.copy(good, data / "real" / "a.png")
    code, _, err = run_cli(["train-stage2", "--data", data, "--out", tmp_path / "run", "--config", "tiny"], monkeypatch, capsys)
    assert code == 1 and err.strip().startswith("error:") and "empty_class" in err and len(err.strip().splitlines()) == 1

    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("train:\n  epochz: 3\n")
    code, _, err = run_cli(["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "r2", "--config", bad_config], monkeypatch, capsys)
    assert code == 1 and "train.epochz" in err and len(err.strip().splitlines()) == 1

    code, _, err = run_cli(["evaluate", trained_run.model_dir, "--data", data], monkeypatch, capsys)
    assert code == 1 and "empty_class" in err

    code, _, err = run_cli(["gradcam", trained_run.model_dir, good, "--out", tmp_path / "corrupt.png" / "maps"], monkeypatch, capsys)
    assert code == 1 and err.strip().splitlines() == [f"error: Not a directory: {tmp_path / 'corrupt.png' / 'maps'}"]

    code, _, err = run_cli(["predict", trained_run.model_dir, good, "--batch-size", "0"], monkeypatch, capsys)
    assert code == 2 and "--batch-size" in err and "Traceback" not in err


def test_train_stage2_says_and_records_the_resolution_it_chose_from_the_images(gan_images, tmp_path, monkeypatch, capsys):
    """32 px images with data.base_size 16 and max_base_size 64 train at 32 px (input 64), not shrunk to 16."""
    sizes = ["data.base_size=16", "data.input_size=32", "data.patch_size=16", "data.max_base_size=64", "train.steps_per_epoch=2"]
    args = ["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "run", "--config", "tiny", "--epochs", "1"]
    code, _, err = run_cli([*args, *[item for size in sizes for item in ("--set", size)]], monkeypatch, capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("precision: ") and lines[1] == "resolution: 32 px images kept (data.max_base_size 64), input 64 px"
    preprocessing = load_detector(str(tmp_path / "run" / "model")).preprocessing
    assert (preprocessing.base_size, preprocessing.input_size, preprocessing.patch_size) == (32, 64, 16)
    recorded = load_config(str(tmp_path / "run" / "config.yaml")).data
    assert (recorded.base_size, recorded.input_size) == (32, 64)


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
    assert "absl::InitializeLog" not in done.stderr and "I0000" not in done.stderr


def test_a_wrong_model_path_is_refused_before_tensorflow_is_imported(tmp_path):
    missing = str(tmp_path / "nope")
    commands = [
        ["predict", missing, "x.png"], ["gradcam", str(tmp_path), "x.png"], ["evaluate", missing, "--data", "x"],
        ["heads", "list", missing], ["heads", "remove", missing, "h"], ["export", missing, "--name", "d"],
    ]
    script = (
        "import sys\n"
        "from tfdnadet.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    sys.argv = ['tfdnadet', *argv]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as stop:\n"
        "        print(stop.code, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[:-1] == ["1 False"] * len(commands), done.stderr
    assert done.stderr.count("error: Model directory not found") == len(commands) - 1
    assert "is not a tfdnadet model directory" in done.stderr


def test_tensorflow_startup_lines_of_child_processes_are_dropped_and_the_rest_kept():
    """A worker process writes to the inherited file descriptor 2: its start-up lines go, everything else stays."""
    child = (
        "import os; os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n'"
        " b'I0000 00:00:1795974694.398514   20683 port.cc:153] oneDNN custom operations are on.\\n'"
        " b'E0000 a real C++ error\\n')"
    )
    script = (
        "import subprocess, sys\n"
        "from tfdnadet.quiet import filter_tensorflow_startup_lines\n"
        "filter_tensorflow_startup_lines()\n"
        f"subprocess.run([sys.executable, '-c', {child!r}])\n"
        "print('from python', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert sorted(done.stderr.splitlines()) == ["E0000 a real C++ error", "from python"]  # the two paths need not keep order


def test_zoo_progress_is_one_line_per_model_in_a_log(capsys):
    """Off a terminal the zoo's per-model bars print nothing; each finished model is one line."""
    from tfdnadet import cli

    with cli._model_progress_bars() as on_progress:
        for model in ("progan-seed0", "mmdgan-seed0"):
            for step in range(1, 4):
                on_progress(model, step, 3)
    assert capsys.readouterr().err.splitlines() == ["progan-seed0: 3/3 steps", "mmdgan-seed0: 3/3 steps"]


def test_training_progress_is_one_line_per_epoch_in_a_log(capsys):
    """Off a terminal the trainers' progress is one line per finished epoch with its metrics, never a step line."""
    import keras

    from tfdnadet import cli

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(12, 3)), np.arange(12) % 2
    with cli._training_progress() as bar:
        model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), verbose=0, callbacks=[bar.callback()])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(re.search(r"loss \d\.\d+  accuracy [\d.]+  val_loss [\d.]+  val_accuracy [\d.]+$", line) for line in lines)
