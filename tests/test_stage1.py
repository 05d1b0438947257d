import csv
import json
import os
import shlex
from collections import Counter

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
from PIL import Image

from conftest import run_cli
from tfdnadet.config import load_config
from tfdnadet.data.transforms import (
    UPSAMPLE_LAYERS,
    TransformBank,
    gaussian_blur,
    make_transform_dataset,
    median_blur,
    random_upsample,
    transform_images,
)
from tfdnadet.errors import TfdnadetError
from tfdnadet.model_metadata import read_metadata
from tfdnadet.models.model_dir import load_backbone, load_detector
from tfdnadet.training.stage1 import natural_crops, train_stage1
from tfdnadet.training.stage2 import train_stage2
from tfdnadet.training.trainer import build_patch_model
from tfdnadet.zoo.photos import load_photos, random_crops


@pytest.fixture(scope="module")
def photo():
    return random_crops(list(load_photos()), 1, 64, seed=3)[0]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for index, image in enumerate(load_photos("A")[:3]):
        Image.fromarray(image).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return str(folder)


@pytest.fixture(scope="module")
def stage1_run(photo_folder, tmp_path_factory):
    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 2})
    return train_stage1(photo_folder, str(tmp_path_factory.mktemp("stage1") / "run"), config, verbose=0)


def test_paper_bank_has_170_classes_in_its_families():
    bank = TransformBank()
    assert len(bank) == 170
    assert len(set(bank.class_names)) == 170
    counts = Counter(t.op for t in bank.transforms)
    assert counts == {"jpeg": 24, "double_jpeg": 24, "gaussian_blur": 14, "median_blur": 14, "resample": 80, "noise": 14}
    for name in ("jpeg_q30", "jpeg_q99", "double_jpeg_q30_q99", "gaussian_blur_k29", "median_blur_k3", "resample_lanczos3_x0.15", "resample_area_x0.9", "noise_var49"):
        assert name in bank.class_names, name


def test_every_class_changes_the_image_and_classes_of_a_family_differ(photo):
    bank = TransformBank(image_size=64)
    labels = np.arange(len(bank), dtype=np.int32)
    outputs = transform_images(np.repeat(photo[None], len(bank), axis=0), labels, bank)
    assert outputs.shape == (170, 64, 64, 3) and outputs.dtype == np.uint8
    unchanged = [name for name, out in zip(bank.class_names, outputs) if np.array_equal(out, photo)]
    assert unchanged == []
    for op in {t.op for t in bank.transforms}:
        members = [out.tobytes() for t, out in zip(bank.transforms, outputs) if t.op == op]
        assert len(set(members)) == len(members), op
    noise = [np.std(out.astype(float) - photo) for t, out in zip(bank.transforms, outputs) if t.op == "noise"]
    assert noise[0] < noise[-1]  # variance 10 vs 49: the residual grows
    assert abs(noise[-1] - np.sqrt(49)) < 1.0


@pytest.mark.parametrize("kernel", [3, 5, 7, 29])  # OpenCV sorts up to 5, counts a histogram from 7
def test_median_blur_equals_scipy(kernel):
    image = np.random.default_rng(kernel).integers(0, 256, (24, 19, 3), dtype=np.uint8)
    expected = scipy.ndimage.median_filter(image, size=(kernel, kernel, 1), mode="reflect")
    np.testing.assert_array_equal(median_blur(tf.constant(image), kernel).numpy(), expected)


def test_gaussian_blur_keeps_flat_images_and_smooths_edges():
    flat = np.full((16, 16, 3), 77, np.uint8)
    np.testing.assert_array_equal(gaussian_blur(tf.constant(flat), 7).numpy(), flat)
    edge = np.zeros((16, 16, 3), np.uint8)
    edge[:, 8:] = 255
    row = gaussian_blur(tf.constant(edge), 7).numpy()[8, :, 0]
    assert row[0] == 0 and row[-1] == 255 and 0 < row[7] < row[8] < 255


@pytest.mark.parametrize("layer", UPSAMPLE_LAYERS)
def test_random_upsampling_layers_leave_their_own_period_2_traces(layer, photo):
    flat = tf.constant(np.full((30, 30, 3), 120, np.uint8))
    out = random_upsample(flat, layer, tf.constant([4, 5])).numpy()
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    # a flat image stays flat on each of the 2 x 2 sub-grids, up to the edges (mirrored borders, no dark frame)
    for dy in (0, 1):
        for dx in (0, 1):
            for channel in range(3):
                assert len(np.unique(out[dy::2, dx::2, channel])) == 1, (dy, dx, channel)
    sub_grids = {int(out[dy, dx, 0]) for dy in (0, 1) for dx in (0, 1)}
    if layer in ("nearest", "bilinear"):  # a resize, then one conv for every pixel: no sub-grid pattern
        assert len(sub_grids) == 1
    else:  # each output pixel of the 2 x 2 block has weights of its own: the checkerboard of generators
        assert len(sub_grids) > 1
    # the weights are new for every seed, the same for the same seed; the photo stays recognisable
    one, again, other = (random_upsample(tf.constant(photo), layer, tf.constant(seed)).numpy() for seed in ([1, 2], [1, 2], [3, 4]))
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, other)
    assert np.corrcoef(one.astype(float).ravel(), photo.astype(float).ravel())[0, 1] > 0.6


def test_a_bank_from_the_config_table():
    bank = TransformBank({"jpeg": [50], "double_jpeg": [[40, 80]], "resample": [[0.5, "area"], [0.25, "nearest"]]})
    assert bank.class_names == ["jpeg_q50", "double_jpeg_q40_q80", "resample_area_x0.5", "resample_nearest_x0.25"]
    assert len(TransformBank(load_config("tiny").stage1.transforms)) == 8


@pytest.mark.parametrize(
    "table, message",
    [
        ({"sharpen": [1]}, "Unknown stage-1 transformation. Received: 'sharpen'"),
        ({"jpeg": [130]}, "quality must be an integer in 1..100. Received: 130"),
        ({"median_blur": [4]}, "kernel must be an odd integer >= 3"),
        ({"resample": [0.5]}, r"each class needs \[factor, method\]"),
        ({"resample": [[0.5, "cubic"]]}, "method must be one of"),
        ({"upsample": ["deconv"]}, "layer must be one of nearest, bilinear, transposed, subpixel. Received: 'deconv'"),
        ({"noise": []}, "non-empty list"),
        ({"jpeg": [30, 30]}, "more than once: jpeg_q30"),
        ([30, 40], "must be a mapping"),
    ],
)
def test_bad_banks_are_clear_errors(table, message):
    with pytest.raises(TfdnadetError, match=message):
        TransformBank(table)


def test_kernels_larger_than_the_images_and_bad_stage1_settings_are_errors():
    with pytest.raises(TfdnadetError, match="too large for 8 px"):
        TransformBank({"gaussian_blur": [29]}, image_size=8)
    with pytest.raises(TfdnadetError, match="stage1.crops"):
        load_config("tiny", {"stage1.crops": 0})
    with pytest.raises(TfdnadetError, match="Unknown config key 'stage1.bank'"):
        load_config("tiny", {"stage1.bank": 3})
    with pytest.raises(TfdnadetError, match="stage1.epochs must be >= 1"):
        load_config("tiny", {"stage1.epochs": 0})


def test_transform_batches_hold_every_class_k_times():
    config = load_config("tiny")
    bank = TransformBank(config.stage1.transforms, config.data.base_size)
    crops = natural_crops(None, 20, config.data.base_size, seed=0, max_pixels=10**8)
    assert crops.shape == (20, 32, 32, 3) and crops.dtype == np.uint8
    patches, labels = next(iter(make_transform_dataset(crops, bank, config.data, images_per_class=3)))
    d = config.data
    assert patches.shape == (len(bank) * 3 * d.patches_per_image, d.patch_size, d.patch_size, 3)
    assert Counter(labels.numpy().tolist()) == {label: 3 * d.patches_per_image for label in range(len(bank))}
    assert -1.0 <= float(tf.reduce_min(patches)) and float(tf.reduce_max(patches)) <= 1.0
    again, _ = next(iter(make_transform_dataset(crops, bank, config.data, images_per_class=3)))
    np.testing.assert_array_equal(patches, again)  # noise and patch positions repeat with the seed
    # A resumed run's stream (start = batches trained) goes on with the uninterrupted run's batches.
    stream = [p.numpy() for p, _ in make_transform_dataset(crops, bank, config.data, 3).take(3)]
    later, _ = next(iter(make_transform_dataset(crops, bank, config.data, 3, start=2)))
    np.testing.assert_array_equal(later, stream[2])


def test_crops_from_a_folder_skip_broken_files_and_repeat_with_the_seed(photo_folder):
    skipped = []
    first = natural_crops(photo_folder, 10, 48, seed=5, max_pixels=10**8, on_skipped=skipped.append)
    assert first.shape == (10, 48, 48, 3)
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    np.testing.assert_array_equal(first, natural_crops(photo_folder, 10, 48, seed=5, max_pixels=10**8))


def test_stage1_model_keeps_its_transformation_head(stage1_run, photo_folder):
    detector = load_detector(stage1_run.model_dir)
    assert detector.class_names == TransformBank(load_config("tiny").stage1.transforms).class_names
    assert detector.class_names[0] == "jpeg_q30"
    run = json.load(open(os.path.join(stage1_run.run_dir, "run.json")))
    assert (run["stage"], run["data_source"], run["step"]) == (1, os.path.abspath(photo_folder), 2)


def test_stage2_init_takes_the_stage1_encoder_and_drops_its_head(stage1_run):
    config = load_config("tiny")
    model = build_patch_model(config, 4, init_model=stage1_run.model_dir)
    stage1 = load_backbone(stage1_run.model_dir)
    assert len(model.backbone.weights) == len(stage1.weights)
    for ours, theirs in zip(model.backbone.weights, stage1.weights):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert model.classifier.num_classes == 4
    fresh = build_patch_model(config, 4)
    assert not np.array_equal(np.asarray(fresh.backbone.weights[0]), np.asarray(stage1.weights[0]))
    with pytest.raises(TfdnadetError, match="trained with model.input_filter none, this config has highpass: set --set model.input_filter=none"):
        build_patch_model(load_config("tiny", {"model.input_filter": "highpass"}), 4, init_model=stage1_run.model_dir)


def test_stage2_refuses_an_init_of_another_input_filter_before_any_run_starts(stage1_run, gan_images, tmp_path):
    config = load_config("tiny", {"model.input_filter": "highpass", "train.runs_per_encoder": 2})
    started = []
    with pytest.raises(TfdnadetError, match="trained with model.input_filter none, this config has highpass"):
        train_stage2(gan_images["train"], str(tmp_path / "run"), config, init_model=stage1_run.model_dir, on_member=lambda *a: started.append(a))
    assert started == [] and not os.path.exists(tmp_path / "run")


def test_train_stage2_cli_with_init_and_with_no_pretrain(stage1_run, gan_images, tmp_path, monkeypatch, capsys):
    stage1 = load_backbone(stage1_run.model_dir)
    # Learning rate 0: the trained encoder is exactly the one each run started from.
    common = ["--data", gan_images["train"], "--config", "tiny", "--epochs", "1", "--steps-per-epoch", "1", "--learning-rate", "0"]
    code, out, err = run_cli(["train-stage2", *common, "--out", tmp_path / "pt", "--init", stage1_run.model_dir], monkeypatch, capsys)
    assert code == 0, err
    pretrained = load_backbone(json.loads(out)["model"])
    for ours, theirs in zip(pretrained.trainable_weights, stage1.trainable_weights):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert load_detector(json.loads(out)["model"]).class_names == ["dcgan", "mmdgan", "progan", "real"]
    assert read_metadata(json.loads(out)["model"])["config"]["train_minutes"] > 0

    code, out, err = run_cli(["train-stage2", *common, "--out", tmp_path / "base", "--no-pretrain"], monkeypatch, capsys)
    assert code == 0, err
    base = load_backbone(json.loads(out)["model"])
    assert not np.array_equal(np.asarray(base.trainable_weights[0]), np.asarray(stage1.trainable_weights[0]))
    assert json.load(open(tmp_path / "base" / "run.json"))["init_model"] is None

    code, _, err = run_cli(["train-stage2", *common, "--out", tmp_path / "both", "--no-pretrain", "--init", stage1_run.model_dir], monkeypatch, capsys)
    assert code == 2 and "--no-pretrain" in err and "exclude" in err


def test_train_stage1_cli_on_builtin_photos_then_resume(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train-stage1", "--out", run, "--config", "tiny", "--steps-per-epoch", "2", "--set", "stage1.crops=40"]
    code, out, err = run_cli([*args, "--epochs", "1"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert {k: summary[k] for k in ("model", "epochs", "steps")} == {"model": str(run / "model"), "epochs": 1, "steps": 2}
    assert json.load(open(run / "run.json"))["data_source"].startswith("built-in photos")
    assert err.splitlines()[0].startswith("precision: ")  # the resolved choice, first once training starts
    first_minutes = read_metadata(str(run / "model"))["config"]["train_minutes"]
    assert first_minutes > 0  # what a stage-2 budget counts as stage 1's

    code, out, err = run_cli([*args, "--epochs", "2"], monkeypatch, capsys)
    assert code == 1 and "--resume" in err and len(err.strip().splitlines()) == 1

    code, out, err = run_cli(["train-stage1", "--out", run, "--resume", "--epochs", "2", "--set", "train.epochs=5"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["epochs"] == 2 and json.loads(out)["steps"] == 4  # --epochs is stage1.epochs, above train.epochs
    with open(run / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]
    assert read_metadata(str(run / "model"))["config"]["train_minutes"] > first_minutes  # summed over the resume


def test_ctrl_c_says_the_command_that_continues_the_run(tmp_path, monkeypatch, capsys):
    """Ctrl-C after epoch 1 ends with one line naming the command to paste; pasted, it trains epoch 2 only."""
    from tfdnadet import cli

    show_epoch = cli._TrainingBar.update

    def ctrl_c_after_epoch_1(bar, progress):
        show_epoch(bar, progress)
        if progress.epoch_done and progress.epoch == 1:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    args = ["train-stage1", "--out", run, "--config", "tiny", "--steps-per-epoch", "1", "--epochs", "2", "--set", "stage1.crops=40"]
    with monkeypatch.context() as patched:
        patched.setattr(cli._TrainingBar, "update", ctrl_c_after_epoch_1)
        code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 130 and out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: tfdnadet train-stage1 ") and last.endswith(" --resume continues from the last finished epoch.")
    pasted = shlex.split(last.removeprefix("interrupted: ").removesuffix(" continues from the last finished epoch."))

    code, out, err = run_cli(pasted[1:], monkeypatch, capsys)
    assert code == 0, err
    assert [line.split()[1] for line in err.splitlines() if line.startswith("epoch ")] == ["2/2"]
    with open(run / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]


def test_resume_continues_on_the_photos_the_run_started_on(photo_folder, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train-stage1", "--out", run, "--config", "tiny", "--steps-per-epoch", "1", "--set", "stage1.crops=40"]
    code, _, err = run_cli([*args, "--data", photo_folder, "--epochs", "1"], monkeypatch, capsys)
    assert code == 0, err

    code, out, err = run_cli([*args, "--resume", "--epochs", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["epochs"] == 2
    assert json.load(open(run / "run.json"))["data_source"] == os.path.abspath(photo_folder)

    code, _, err = run_cli([*args, "--data", tmp_path, "--resume", "--epochs", "3"], monkeypatch, capsys)
    assert code == 1 and "resume it on the same photos" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case, message", [("missing", "no such folder"), ("empty", "holds no image files"), ("broken", "No usable photos")])
def test_missing_empty_or_unusable_data_folders_are_one_line_errors(case, message, tmp_path, monkeypatch, capsys):
    folder = tmp_path / case
    if case != "missing":
        folder.mkdir()
    if case == "broken":
        (folder / "a.png").write_bytes(b"\x89PNG broken")
    code, out, err = run_cli(["train-stage1", "--data", folder, "--out", tmp_path / "run", "--config", "tiny"], monkeypatch, capsys)
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == "" and not (tmp_path / "run").exists()
