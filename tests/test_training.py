import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_dataset, load_labelled
from tfdnadet.methods import apply_method
from tfdnadet.models.model_dir import load_detector
from tfdnadet.training.stage2 import train_stage2


def test_stage2_learns_architectures_that_hold_on_unseen_seeds(trained_run, gan_images):
    detector = load_detector(trained_run.model_dir)
    assert detector.class_names == ["dcgan", "mmdgan", "progan", "real"]
    metrics = evaluate_dataset(detector, gan_images["test"], batch_size=32)
    # Held-out generator seeds: chance is 0.25.
    assert metrics["accuracy"] >= 0.6, metrics["accuracy"]
    assert metrics["count"] == 3 * 24 + 12


def test_the_same_config_and_data_train_the_same_weights_in_one_process(gan_images, tmp_path):
    """Random draws are keyed by the seed alone: a second run repeats the first, whatever ran before it."""
    from tfdnadet.config import load_config

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 3, "train.precision": "float32"})
    first, second = (load_detector(train_stage2(gan_images["train"], str(tmp_path / name), config, verbose=0).model_dir) for name in ("a", "b"))
    for a, b in zip(first.backbone.get_weights(), second.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 3, "train.precision": "float32", "train.seed": 1})
    third = load_detector(train_stage2(gan_images["train"], str(tmp_path / "c"), other, verbose=0).model_dir)
    assert not np.array_equal(first.backbone.get_weights()[0], third.backbone.get_weights()[0])


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


def test_streamed_predict_matches_decoding_everything_first(trained_run, gan_images, tmp_path):
    from tfdnadet.data.sources import read_dataset
    from tfdnadet.inference import load_for_detector, predict_files, predict_loaded

    detector = load_detector(trained_run.model_dir)
    paths = read_dataset(gan_images["test"], detector.class_names).paths[:11]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    files = paths[:4] + [str(tmp_path / "broken.png")] + paths[4:]
    outputs, used, failures = predict_files(detector, files, batch_size=3)  # a bad file inside a batch, a ragged last batch
    assert used == paths and [path for path, _ in failures] == [str(tmp_path / "broken.png")]
    expected = predict_loaded(detector, load_for_detector(detector, paths), batch_size=5)
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, atol=1e-6)
    assert predict_files(detector, [str(tmp_path / "broken.png")])[:2] == ({}, [])


def test_resume_continues_from_the_last_checkpoint(gan_images, tiny_config, tmp_path):
    from tfdnadet.config import load_config

    run = str(tmp_path / "run")
    two = load_config("tiny", {"train.epochs": 2, "train.steps_per_epoch": 3})
    first = train_stage2(gan_images["train"], run, two, verbose=0)
    assert (first.epochs_completed, first.steps) == (2, 6)
    with pytest.raises(TfdnadetError, match="--resume"):
        train_stage2(gan_images["train"], run, two, verbose=0)
    recorded = open(os.path.join(run, "config.yaml")).read()
    wider = load_config("tiny", {"train.epochs": 3, "train.steps_per_epoch": 3, "model.width": 0.25})
    expected = (
        f"Cannot resume {run}: its checkpoint does not fit the model this config builds (it differs from the run's in "
        f"model.width, train.epochs). Resume with the run's own config: --config {run}/config.yaml"
    )
    with pytest.raises(TfdnadetError, match=f"^{re.escape(expected)}$"):
        train_stage2(gan_images["train"], run, wider, resume=True, verbose=0)
    assert open(os.path.join(run, "config.yaml")).read() == recorded  # the failed resume kept the run's record
    filtered = load_config("tiny", {"train.epochs": 3, "train.steps_per_epoch": 3, "model.input_filter": "highpass"})
    with pytest.raises(TfdnadetError, match=r"differs from the run's in model.input_filter, train.epochs\)"):  # same weights, other input
        train_stage2(gan_images["train"], run, filtered, resume=True, verbose=0)
    three = load_config("tiny", {"train.epochs": 3, "train.steps_per_epoch": 3})
    resumed = train_stage2(gan_images["train"], run, three, resume=True, verbose=0)
    assert (resumed.epochs_completed, resumed.steps) == (3, 9)
    assert list(resumed.history["loss"]) and len(resumed.history["loss"]) == 1  # only the missing epoch ran
    with open(os.path.join(run, "history.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_a_resumed_run_trains_the_weights_of_the_uninterrupted_one(gan_images, tmp_path):
    """--resume goes on with the batches the run would have trained on (not the first epoch's again)."""
    from tfdnadet.config import load_config

    settings = {"train.steps_per_epoch": 2, "train.precision": "float32", "data.augment": "table5", "train.gradcam_images": 0}
    whole = train_stage2(gan_images["train"], str(tmp_path / "whole"), load_config("tiny", {**settings, "train.epochs": 2}), verbose=0)
    run = str(tmp_path / "stopped")
    train_stage2(gan_images["train"], run, load_config("tiny", {**settings, "train.epochs": 1}), verbose=0)
    resumed = train_stage2(gan_images["train"], run, load_config("tiny", {**settings, "train.epochs": 2}), resume=True, verbose=0)
    assert resumed.steps == whole.steps == 4
    for a, b in zip(load_detector(whole.model_dir).backbone.get_weights(), load_detector(resumed.model_dir).backbone.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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


def _block_weights(backbone, blocks):
    return {w.path: np.asarray(w) for layer in backbone.layers if layer.name.split("_")[0] in blocks for w in layer.weights}


def test_finetune_from_block_keeps_lower_blocks_bit_identical_and_trains_the_rest(trained_run, gan_images, tmp_path):
    from tfdnadet.config import load_config

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 3, "train.finetune_from_block": 5})
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, init_model=trained_run.model_dir, verbose=0)
    before, after = load_detector(trained_run.model_dir).backbone, load_detector(result.model_dir).backbone
    lower, upper = {f"block{i}" for i in range(1, 5)}, {f"block{i}" for i in range(5, 9)}
    frozen_before, frozen_after = _block_weights(before, lower), _block_weights(after, lower)
    assert len(frozen_before) == 4 * 6  # conv kernel + bias, BN gamma, beta and moving statistics per block
    for path, value in frozen_before.items():  # BatchNorm of a frozen block runs in inference mode: stats untouched
        np.testing.assert_array_equal(frozen_after[path], value, err_msg=path)
    trained_after = _block_weights(after, upper)
    changed = [path for path, value in _block_weights(before, upper).items() if not np.array_equal(trained_after[path], value)]
    assert len(changed) == len(trained_after) == 4 * 6
    assert json.load(open(os.path.join(result.run_dir, "run.json")))["selection"]["finetune_from_block"] == 5


def test_finetune_from_block_is_for_a_pretrained_encoder_a_random_one_trains_whole(gan_images, tmp_path):
    from tfdnadet.config import load_config

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 2, "train.finetune_from_block": 5})
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, verbose=0)  # no --init
    assert json.load(open(os.path.join(result.run_dir, "run.json")))["selection"]["finetune_from_block"] == 0
    attnet = apply_method(config, "attnet")  # 4 blocks: 5 would be an error on an encoder it applied to
    result = train_stage2(gan_images["train"], str(tmp_path / "attnet"), attnet, resume=True, verbose=0)  # as the benchmarks run
    assert json.load(open(os.path.join(result.run_dir, "run.json")))["selection"]["finetune_from_block"] == 0
    assert all(layer.trainable for layer in load_detector(result.model_dir).backbone.layers)


def test_freeze_backbone_trains_the_heads_only(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["train-stage2", "--data", gan_images["train"], "--out", out, "--config", "tiny", "--epochs", "1", "--steps-per-epoch", "2",
         "--init", trained_run.model_dir, "--freeze-backbone"], monkeypatch, capsys,
    )
    assert code == 0, err
    before, after = load_detector(trained_run.model_dir), load_detector(str(out / "model"))
    for a, b in zip(before.backbone.weights, after.backbone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(before.heads["multiclass"].weights[0]), np.asarray(after.heads["multiclass"].weights[0]))
    assert after.config["train"]["finetune_from_block"] == "frozen"
    assert json.loads(stdout)["selection"]["finetune_from_block"] == "frozen"


@pytest.mark.parametrize("ema_momentum", [None, 0.5])
def test_epoch_is_chosen_on_validation_generator_models_and_both_curves_are_recorded(gan_images, tmp_path, ema_momentum):
    from tfdnadet.config import load_config

    overrides = {"train.epochs": 3, "train.steps_per_epoch": 3, "train.select_on": "val_models", "train.ema_momentum": ema_momentum}
    config = load_config("tiny", overrides)
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, val_data=gan_images["test"], verbose=0)
    with open(os.path.join(result.run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    val_models = [float(r["val_models_accuracy"]) for r in rows]
    assert len(val_models) == 3 and all(0 <= float(r["heldout_images_accuracy"]) <= 1 for r in rows)
    selection = json.load(open(os.path.join(result.run_dir, "run.json")))["selection"]
    assert selection["select_on"] == "val_models" and selection["epoch"] == 1 + int(np.argmax(val_models)) == result.selection["epoch"]
    assert selection["val_models_accuracy"] == max(val_models) and selection["epochs_run"] == 3
    # The kept model is the chosen epoch's, judged as `evaluate` judges it (patch grid of the Detector).
    metrics = evaluate_dataset(load_detector(result.model_dir), gan_images["test"], batch_size=32)
    assert metrics["accuracy"] == pytest.approx(selection["val_models_accuracy"], abs=1e-6)


def test_a_run_trained_with_augmentation_is_chosen_on_clean_and_augmented_validation_models(gan_images, tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.data.perturb import table5_augment
    from tfdnadet.training.selection import augmented_validation

    overrides = {"train.epochs": 3, "train.steps_per_epoch": 3, "data.augment": table5_augment(), "train.gradcam_images": 0}
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), load_config("tiny", overrides), val_data=gan_images["test"], verbose=0)
    with open(os.path.join(result.run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    clean = np.array([float(r["val_models_accuracy"]) for r in rows])
    augmented = np.array([float(r["val_models_augmented_accuracy"]) for r in rows])
    scores = (clean + augmented) / 2
    best = int(np.argmax(scores))
    selection = result.selection
    assert selection["epoch"] == best + 1 and selection["score_per_epoch"] == pytest.approx(scores.tolist())
    assert (selection["val_models_accuracy"], selection["val_models_augmented_accuracy"]) == (clean[best], augmented[best])
    # The augmented copies are the same pixels every time (every epoch is judged alike) and not the clean ones.
    detector = load_detector(result.model_dir)
    loaded = load_labelled(detector, gan_images["test"])
    first = augmented_validation(loaded, overrides["data.augment"]).images
    again = augmented_validation(loaded, overrides["data.augment"]).images
    np.testing.assert_array_equal(first, again)
    assert first.shape == loaded.images.shape and first.dtype == np.uint8 and not np.array_equal(first, loaded.images)
    assert augmented_validation(loaded, []) is None


def test_ema_momentum_saves_the_averaged_weights_and_checkpoints_the_raw_ones(gan_images, tmp_path):
    import tensorflow as tf

    from tfdnadet.config import load_config
    from tfdnadet.training.callbacks import CHECKPOINT_WEIGHTS
    from tfdnadet.training.trainer import build_training_model

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 3, "train.ema_momentum": 0.5, "train.gradcam_images": 0})
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, verbose=0)
    model = build_training_model(config, ["a", "b", "c", "d"])
    model(tf.zeros([1, config.data.patch_size, config.data.patch_size, 3]))
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(result.run_dir, "checkpoint", CHECKPOINT_WEIGHTS))
    raw = np.asarray(model.classifier.weights[0])
    model.optimizer.finalize_variable_values(model.trainable_variables)
    averaged, saved = np.asarray(model.classifier.weights[0]), np.asarray(load_detector(result.model_dir).heads["multiclass"].weights[0])
    assert not np.allclose(raw, averaged)
    np.testing.assert_allclose(saved, averaged)
    with pytest.raises(TfdnadetError, match="ema_momentum"):
        load_config("tiny", {"train.ema_momentum": 1.0})


def test_patience_stops_when_validation_models_do_not_improve_and_resume_keeps_the_stop(gan_images, tmp_path):
    from tfdnadet.config import load_config

    # Nothing can learn (heads only, learning rate 0): epoch 1 stays the best, one epoch of patience stops at 2.
    overrides = {"train.epochs": 5, "train.steps_per_epoch": 2, "train.patience": 1, "train.learning_rate": 0.0, "train.finetune_from_block": "none"}
    run = str(tmp_path / "run")
    result = train_stage2(gan_images["train"], run, load_config("tiny", overrides), val_data=gan_images["test"], verbose=0)
    assert (result.epochs_completed, result.selection["epoch"], result.selection["stopped_early"]) == (2, 1, True)
    resumed = train_stage2(gan_images["train"], run, load_config("tiny", overrides), val_data=gan_images["test"], resume=True, verbose=0)
    assert (resumed.epochs_completed, resumed.history) == (2, {})


def test_selection_settings_are_checked(tmp_path, gan_images):
    from tfdnadet.config import load_config
    from tfdnadet.training.selection import selection_mode, validation_data

    for key, value, message in (
        ("train.finetune_from_block", "half", "finetune_from_block"),
        ("train.select_on", "best", "select_on"),
        ("train.patience", 0, "patience"),
    ):
        with pytest.raises(TfdnadetError, match=message):
            load_config("tiny", {key: value})
    with pytest.raises(TfdnadetError, match="--val-data"):
        selection_mode("val_models", False)
    assert (selection_mode("auto", True), selection_mode("auto", False)) == ("val_models", "last")
    assert validation_data(None, gan_images["train"]) is None  # not in a zoo: no validation models
    assert validation_data(gan_images["test"], gan_images["train"]) == gan_images["test"]
    config = load_config("tiny", {"train.finetune_from_block": 9})
    from tfdnadet.training.trainer import build_patch_model

    with pytest.raises(TfdnadetError, match="has 8 blocks"):
        build_patch_model(config, 4)


def test_validation_models_of_classes_not_trained_on_are_left_out(gan_images):
    from tfdnadet.config import load_config
    from tfdnadet.data.sources import read_dataset
    from tfdnadet.training.stage2 import _load_val_models

    everything = read_dataset(gan_images["test"])
    loaded = _load_val_models(gan_images["test"], ["progan"], load_config("tiny").data, False)
    assert len(loaded.labels) == int(np.sum(everything.labels == everything.class_names.index("progan"))) > 0
    assert set(loaded.labels.tolist()) == {0}
    with pytest.raises(TfdnadetError, match="none of the training classes"):
        _load_val_models(gan_images["test"], ["stylegan9"], load_config("tiny").data, False)


def _png(path, width, height):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    return str(path)


def test_fit_resolution_keeps_larger_images_up_to_max_base_size(tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.training.resolution import fit_resolution

    paths = [_png(tmp_path / "a.png", 80, 60), _png(tmp_path / "b.png", 100, 100), str(tmp_path / "missing.png")]
    config = load_config("tiny", {"data.base_size": 32, "data.input_size": 64, "data.patch_size": 16, "data.max_base_size": 128})
    fitted, note = fit_resolution(config, paths)
    assert (fitted.data.base_size, fitted.data.input_size, fitted.data.patch_size) == (60, 120, 16)
    assert note == "resolution: 60 px images kept (data.max_base_size 128), input 120 px"
    assert fit_resolution(fitted, paths) == (fitted, None)  # a resumed run keeps its sizes
    capped, note = fit_resolution(load_config("tiny", {"data.max_base_size": 48}), paths)
    assert (capped.data.base_size, capped.data.input_size) == (48, 96)
    assert note == "resolution: 60 px images resized to 48 px (data.max_base_size 48), input 96 px"
    assert fit_resolution(capped, paths) == (capped, "resolution: 60 px images shrunk to 48 px (data.base_size; max_base_size 48)")
    fixed = load_config("tiny")  # max_base_size null: every image resized to base_size, and the user told how to keep more
    assert fit_resolution(fixed, paths) == (
        fixed,
        "resolution: 60 px images shrunk to 32 px (data.base_size; see max_base_size)",
    )
    smaller = load_config("tiny", {"data.base_size": 64, "data.input_size": 128, "data.max_base_size": 256})
    assert fit_resolution(smaller, paths)[1] is None  # images no larger than base_size: as before
    whole, _ = fit_resolution(apply_method(config, "base"), paths)
    assert whole.data.patch_size == whole.data.input_size == 120

