"""Grad-CAM: heatmaps of any head at any block, mixed precision, the `gradcam` command and the training callback."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_cli
from tfdnadet.errors import TfdnadetError
from tfdnadet.explain.gradcam import GradCAM
from tfdnadet.models.backbones import create_backbone
from tfdnadet.models.detector import Detector, Preprocessing
from tfdnadet.models.model_dir import load_detector
from tfdnadet.models.encoder import channels
from tfdnadet.models.heads import BinaryHead, MulticlassHead


@pytest.fixture(scope="module")
def detector(trained_run):
    return load_detector(trained_run.model_dir)


@pytest.fixture(scope="module")
def inputs(gan_images, detector):
    from tfdnadet.data.preprocess import to_model_input
    from tfdnadet.inference import load_for_detector

    paths = [os.path.join(gan_images["root"], arch, "seed2", "0000.png") for arch in ("progan", "mmdgan", "dcgan")]
    loaded = load_for_detector(detector, paths)
    return to_model_input(loaded.images, detector.preprocessing.input_size)


def test_heatmaps_have_the_image_size_are_finite_and_not_constant(detector, inputs):
    result = GradCAM(detector)(inputs)
    size = detector.preprocessing.input_size
    assert result.heatmaps.shape == (3, size, size) and result.heatmaps.dtype == np.float32
    assert np.all(np.isfinite(result.heatmaps))
    assert result.heatmaps.min() >= 0.0 and np.allclose(result.heatmaps.max(axis=(1, 2)), 1.0)
    assert np.all(result.heatmaps.std(axis=(1, 2)) > 0.01)
    probabilities = detector.predict(inputs)["multiclass"]
    np.testing.assert_array_equal(result.targets, probabilities.argmax(axis=1))
    np.testing.assert_allclose(result.scores, probabilities.max(axis=1), atol=1e-5)


def test_heatmaps_change_with_the_head_and_the_class(detector, inputs):
    multiclass = GradCAM(detector)(inputs)
    other_class = GradCAM(detector)(inputs, (multiclass.targets + 1) % len(detector.class_names))
    keras.utils.set_random_seed(1)
    binary = BinaryHead(detector.backbone.feature_dim, hidden_dim=8, name="progan")
    detector.add_head("progan", binary, {"class_names": ["progan"]})
    one_vs_all = GradCAM(detector, "progan")(inputs)
    assert one_vs_all.heatmaps.shape == multiclass.heatmaps.shape
    assert np.all(one_vs_all.targets == 0)
    np.testing.assert_allclose(one_vs_all.scores, detector.predict(inputs)["progan"][:, 0], atol=1e-5)
    assert np.abs(one_vs_all.heatmaps - multiclass.heatmaps).mean() > 0.01
    assert np.abs(other_class.heatmaps - multiclass.heatmaps).mean() > 0.01


def one_head_detector(backbone, head, input_layer="pool", predict_on="whole"):
    info = {"input_layer": input_layer, "class_names": ["a", "b", "c"]}
    return Detector(backbone, {head.name: head}, {head.name: info}, Preprocessing(32, 64, 32, 10**8, predict_on), {})


def test_head_on_a_block_feature_map_and_layers_past_it():
    backbone = create_backbone("dnadet", width=0.125, name="encoder")
    head = BinaryHead(channels(256, 0.125), hidden_dim=8, finetune_top=2, width=0.125, name="sngan")
    images = tf.random.uniform([2, 64, 64, 3], -1, 1, seed=3)
    result = GradCAM(one_head_detector(backbone, head, "block6"), "sngan", layer=5)(images)
    assert result.heatmaps.shape == (2, 64, 64) and np.all(np.isfinite(result.heatmaps))
    with pytest.raises(TfdnadetError, match=r"1\.\.6 \(this head reads encoder layer 6\)"):
        GradCAM(one_head_detector(backbone, head, "block6"), "sngan", layer=7)
    with pytest.raises(TfdnadetError, match="Encoder layer must be 1..8. Received: layer=0"):
        GradCAM(one_head_detector(backbone, MulticlassHead(backbone.feature_dim, 3, name="multiclass")), layer=0)
    with pytest.raises(TfdnadetError, match="Unknown head. Received: head='real'"):
        GradCAM(one_head_detector(backbone, head, "block6"), "real")


def test_mixed_precision_gives_the_float32_maps():
    full = create_backbone("dnadet", width=0.125, name="encoder")
    mixed = create_backbone("dnadet", width=0.125, dtype="mixed_float16", name="encoder")
    mixed.set_weights(full.get_weights())
    head = MulticlassHead(full.feature_dim, 3, name="multiclass")
    images = tf.random.uniform([2, 64, 64, 3], -1, 1, seed=4)
    expected = GradCAM(one_head_detector(full, head, predict_on="patches"))(images)
    result = GradCAM(one_head_detector(mixed, head, predict_on="patches"))(images)
    assert np.all(np.isfinite(result.heatmaps))
    np.testing.assert_allclose(result.heatmaps, expected.heatmaps, atol=1e-5)


def test_all_zero_maps_give_zeros_not_nan():
    backbone = create_backbone("dnadet", width=0.125, name="encoder")
    head = MulticlassHead(backbone.feature_dim, 3, name="multiclass")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    explainer = GradCAM(one_head_detector(backbone, head))
    result = explainer(np.zeros([2, 32, 32, 3], np.float32))
    assert result.heatmaps.shape == (2, 32, 32)
    np.testing.assert_array_equal(result.heatmaps, 0.0)
    np.testing.assert_allclose(result.scores, 1 / 3, atol=1e-6)
    with pytest.raises(TfdnadetError, match="class_index must be in 0..2"):
        explainer(np.zeros([1, 32, 32, 3], np.float32), 3)


def _png_size(path):
    with Image.open(path) as image:
        image.load()
        return image.size


def test_gradcam_command_writes_overlays_and_a_contact_sheet(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    folder = os.path.join(gan_images["root"], "mmdgan", "seed2")
    images = [os.path.join(folder, name) for name in ("0000.png", "0001.png")]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "cams"
    code, stdout, stderr = run_cli(["gradcam", trained_run.model_dir, *images, str(broken), "--layer", "3", "--out", out], monkeypatch, capsys)
    assert code == 3, stderr
    result = json.loads(stdout)
    assert result["layer"] == 3 and result["head"] == "multiclass"
    assert [os.path.basename(item["overlay"]) for item in result["images"]] == ["0000_gradcam.png", "0001_gradcam.png"]
    assert all(item["label"] in ("dcgan", "mmdgan", "progan", "real") and 0 < item["score"] <= 1 for item in result["images"])
    for item in result["images"]:
        assert min(_png_size(item["overlay"])) > 100
    assert result["contact_sheet"] == str(out / "contact_sheet.png") and min(_png_size(result["contact_sheet"])) > 100
    assert "broken.png" in stderr

    code, stdout, _ = run_cli(["gradcam", trained_run.model_dir, images[0], "--out", tmp_path / "one"], monkeypatch, capsys)
    assert code == 0 and json.loads(stdout)["contact_sheet"] is None
    assert os.listdir(tmp_path / "one") == ["0000_gradcam.png"]


def test_gradcam_command_errors_are_one_line(trained_run, gan_images, monkeypatch, capsys, tmp_path):
    image = os.path.join(gan_images["root"], "real", "0000.png")
    code, _, stderr = run_cli(["gradcam", trained_run.model_dir, image, "--head", "nope", "--out", tmp_path], monkeypatch, capsys)
    assert code == 1
    assert stderr.strip() == "error: Unknown head. Received: head='nope'. This model's heads: multiclass"
    code, _, stderr = run_cli(["gradcam", trained_run.model_dir, image, "--layer", "9", "--out", tmp_path], monkeypatch, capsys)
    assert code == 1 and stderr.strip() == "error: Encoder layer must be 1..8. Received: layer=9"


def _tensorboard_image_tags(directory):
    tags = []
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags += [(value.tag, event.step) for value in event.summary.value if value.metadata.plugin_data.plugin_name == "images"]
    return tags


def test_callback_writes_epoch_pictures_and_tensorboard_for_a_two_epoch_run(gan_images, tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.training.stage2 import train_stage2

    config = load_config("tiny", {"train.epochs": 2, "train.steps_per_epoch": 2, "train.gradcam_images": 5})
    run = tmp_path / "run"
    train_stage2(gan_images["train"], str(run), config, verbose=0)
    assert sorted(os.listdir(run / "gradcam")) == ["epoch_001.png", "epoch_002.png"]
    width, height = _png_size(run / "gradcam" / "epoch_002.png")
    assert width > 4 * 150 and height > 150  # five panels: four in a row
    assert _tensorboard_image_tags(run / "tb" / "gradcam") == [("gradcam", 1), ("gradcam", 2)]
    assert glob.glob(str(run / "tb" / "train" / "events.out.tfevents.*"))


def test_evidence_callbacks_follow_the_config(tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.training.gradcam_callback import GradCAMCallback, evidence_callbacks, spread_over_classes

    labels = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(spread_over_classes(labels, 4), [0, 3, 5, 1])
    images = np.zeros([6, 32, 32, 3], np.uint8)
    default = evidence_callbacks(str(tmp_path), (images, labels), ["a", "b", "c"], load_config("tiny"))
    assert [type(c).__name__ for c in default] == ["TensorBoard", "GradCAMCallback"]
    assert len(default[1].labels) == 6 and default[1].inputs.shape == (6, 64, 64, 3)
    off = load_config("tiny", {"train.gradcam_images": 0, "train.tensorboard": False})
    assert evidence_callbacks(str(tmp_path), (images, labels), ["a", "b", "c"], off) == []
    no_validation = evidence_callbacks(str(tmp_path), None, ["a"], load_config("tiny"))
    assert not any(isinstance(c, GradCAMCallback) for c in no_validation)
    with pytest.raises(TfdnadetError, match="train.gradcam_images must be >= 0"):
        load_config("tiny", {"train.gradcam_images": -1})
