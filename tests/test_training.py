import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_dataset
from tfdnadet.models.model_dir import load_detector
from tfdnadet.training.stage2 import train_stage2


def test_stage2_learns_architectures_that_hold_on_unseen_seeds(trained_run, gan_images):
    detector = load_detector(trained_run.model_dir)
    assert detector.class_names == ["dcgan", "mmdgan", "progan", "real"]
    metrics = evaluate_dataset(detector, gan_images["test"], batch_size=32)
    # Held-out generator seeds: chance is 0.25.
    assert metrics["accuracy"] >= 0.6, metrics["accuracy"]
    assert metrics["count"] == 3 * 24 + 12


def test_run_directory_holds_history_curves_checkpoint_and_model(trained_run, tiny_config):
    run = trained_run.run_dir
    for name in ("config.yaml", "history.csv", "curves.png", "run.json", "checkpoint/state.json", "model/detector.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    with open(os.path.join(run, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == tiny_config.train.epochs
    assert {"loss", "accuracy", "supcon", "ce", "val_accuracy"} <= set(rows[0])
    assert trained_run.steps == tiny_config.train.epochs * tiny_config.train.steps_per_epoch
    assert json.load(open(os.path.join(run, "run.json")))["epoch"] == tiny_config.train.epochs


def test_save_load_gives_identical_predictions(trained_run, gan_images):
    first = evaluate_dataset(load_detector(trained_run.model_dir), gan_images["test"])
    second = evaluate_dataset(load_detector(trained_run.model_dir), gan_images["test"])
    assert first["confusion_matrix"] == second["confusion_matrix"]


def test_resume_continues_from_the_last_checkpoint(gan_images, tiny_config, tmp_path):
    from tfdnadet.config import load_config

    run = str(tmp_path / "run")
    two = load_config("tiny", {"train.epochs": 2, "train.steps_per_epoch": 3})
    first = train_stage2(gan_images["train"], run, two, verbose=0)
    assert (first.epochs_completed, first.steps) == (2, 6)
    with pytest.raises(TfdnadetError, match="--resume"):
        train_stage2(gan_images["train"], run, two, verbose=0)
    three = load_config("tiny", {"train.epochs": 3, "train.steps_per_epoch": 3})
    resumed = train_stage2(gan_images["train"], run, three, resume=True, verbose=0)
    assert (resumed.epochs_completed, resumed.steps) == (3, 9)
    assert list(resumed.history["loss"]) and len(resumed.history["loss"]) == 1  # only the missing epoch ran
    with open(os.path.join(run, "history.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_init_from_model_copies_the_encoder(trained_run, gan_images, tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.training.trainer import build_patch_model

    config = load_config("tiny")
    model = build_patch_model(config, 4, init_model=trained_run.model_dir)
    source = load_detector(trained_run.model_dir).backbone
    for a, b in zip(model.backbone.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(TfdnadetError, match="width"):
        build_patch_model(load_config("tiny", {"model.width": 0.25}), 4, init_model=trained_run.model_dir)


def test_mirrored_strategy_on_two_logical_cpus(gan_images, tmp_path):
    script = textwrap.dedent(
        f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfdnadet.config import load_config
        from tfdnadet.training.stage2 import train_stage2
        config = load_config("tiny", {{"train.epochs": 1, "train.steps_per_epoch": 3, "train.distribution": "mirrored",
                                      "train.devices": ["/cpu:0", "/cpu:1"]}})
        result = train_stage2({gan_images["train"]!r}, {str(tmp_path / "run")!r}, config, verbose=0)
        print("REPLICAS", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).num_replicas_in_sync, "STEPS", result.steps)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REPLICAS 2 STEPS 3" in done.stdout
    assert os.path.isfile(tmp_path / "run" / "model" / "backbone.keras")


def test_mixed_precision_training_writes_a_float32_usable_model(gan_images, tmp_path):
    from tfdnadet.config import load_config

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 2, "train.precision": "mixed_bfloat16"})
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, verbose=0)
    detector = load_detector(result.model_dir)
    probabilities = detector.predict(np.zeros((2, 64, 64, 3), np.float32))["multiclass"]
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(probabilities))
