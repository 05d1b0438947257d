"""The two-domain backbone (DNA-Det encoder + spectral branch): shapes, round trips, mixed precision, export, training."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from test_models import check_keras_round_trip
from tfdnadet.errors import TfdnadetError
from tfdnadet.explain.gradcam import GradCAM
from tfdnadet.export import export_model
from tfdnadet.methods import apply_method
from tfdnadet.models.backbones import create_backbone
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.models.model_dir import load_detector, save_detector
from tfdnadet.models.heads import MulticlassHead
from tfdnadet.models.two_domain import SPECTRAL_POOL, SPECTRUM_SIZE, LogMagnitudeSpectrum, SpectralEncoder, TwoDomainEncoder

PREPROCESSING = Preprocessing(base_size=32, input_size=64, patch_size=32, max_pixels=10**8, predict_on="patches")
CLASSES = ["real", "progan", "sngan"]


def random_images(count, size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype("float32")


def two_domain_detector(precision="float32"):
    backbone = TwoDomainEncoder(width=0.125, dtype=precision, name="encoder")
    detector = Detector(backbone, {}, {}, PREPROCESSING, {})
    detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, len(CLASSES), name=MULTICLASS), {"class_names": CLASSES})
    return detector


def test_spectrum_is_centred_orthonormal_log_magnitude():
    constant = np.full((1, 8, 6, 3), 0.5, np.float32)
    spectrum = keras.ops.convert_to_numpy(LogMagnitudeSpectrum()(constant))
    expected = np.zeros_like(spectrum)
    expected[:, 4, 3, :] = np.log1p(0.5 * np.sqrt(8 * 6))  # all energy at zero frequency, shifted to the centre
    np.testing.assert_allclose(spectrum, expected, atol=1e-5)
    # A cosine of period 2 pixels along the width is the highest frequency: the first column after the shift.
    stripes = np.tile(np.array([1.0, -1.0], np.float32), 4)[None, None, :, None] * np.ones((1, 8, 8, 1), np.float32)
    peak = keras.ops.convert_to_numpy(LogMagnitudeSpectrum()(stripes))[0, :, :, 0]
    assert np.unravel_index(np.argmax(peak), peak.shape) == (4, 0)


def test_shapes_named_blocks_and_any_input_size():
    backbone = TwoDomainEncoder(width=0.25, name="encoder")
    assert backbone.feature_dim == 128 and backbone.get_layer("pool").output.shape[-1] == 128
    # The spatial branch is the DNA-Det encoder, block for block, with real named feature maps.
    assert [backbone.get_layer(f"block{i}").output.shape[-1] for i in range(1, 9)] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert backbone.get_layer(SPECTRAL_POOL).output.shape[-1] == 64
    assert backbone.get_layer("spectrum_grid").output.shape[1:3] == (SPECTRUM_SIZE, SPECTRUM_SIZE)
    for size in (32, 64, 48):  # a patch, a whole image, a size that is not a power of two
        assert backbone(random_images(2, size)).shape == (2, 128)
    assert SpectralEncoder(width=0.25)(random_images(2, 48)).shape == (2, 64)


@pytest.mark.parametrize("name", ["dnadet_spectral", "spectral"])
def test_round_trip_and_the_spectral_branch_matters(name, tmp_path):
    model = create_backbone(name, width=0.125, name="encoder")
    images = random_images(2, 32)
    check_keras_round_trip(model, images, tmp_path)
    # A circular shift leaves |FFT| unchanged: the spectral-only backbone gives the same features, the two-domain
    # one (whose spatial branch pads with zeros) does not.
    shifted = np.roll(images, 5, axis=2)
    spectral_same = np.allclose(model(images), model(shifted), atol=1e-5)
    assert spectral_same == (name == "spectral")


def test_detector_save_load_and_savedmodel_parity(tmp_path):
    detector = two_domain_detector()
    images = random_images(4, 64, seed=1)
    save_detector(detector, str(tmp_path / "model"))
    loaded = load_detector(str(tmp_path / "model"))
    assert isinstance(loaded.backbone, TwoDomainEncoder)
    np.testing.assert_array_equal(detector.predict(images)[MULTICLASS], loaded.predict(images)[MULTICLASS])
    result = export_model(str(tmp_path / "model"), "two_domain", str(tmp_path / "base"))
    served = tf.saved_model.load(result.path).signatures["predict_images"](images=tf.constant(images))
    np.testing.assert_allclose(served["multiclass_probabilities"].numpy(), loaded.predict(images)[MULTICLASS], atol=1e-5)


def test_mixed_bfloat16_computes_the_spectrum_in_float32_and_exports(tmp_path):
    detector = two_domain_detector("mixed_bfloat16")
    backbone = detector.backbone
    assert backbone.get_layer("spectrum").compute_dtype == "float32" and backbone.get_layer("spectrum_grid").compute_dtype == "float32"
    assert backbone.get_layer("block4").compute_dtype == "bfloat16"
    images = random_images(3, 64, seed=2)
    probabilities = detector.predict(images)[MULTICLASS]
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(probabilities))
    float32 = detector.float32()
    assert float32.backbone.get_layer("block4").compute_dtype == "float32"
    np.testing.assert_allclose(probabilities, float32.predict(images)[MULTICLASS], atol=0.05)  # bfloat16 rounding only
    save_detector(detector, str(tmp_path / "model"))
    for precision, expected, tolerance in (("float32", float32.predict(images), 1e-5), ("mixed_bfloat16", detector.predict(images), 1e-3)):
        result = export_model(str(tmp_path / "model"), f"mixed_{precision}", str(tmp_path / "base"), precision=precision)
        served = tf.saved_model.load(result.path).signatures["predict_images"](images=tf.constant(images))
        np.testing.assert_allclose(served["multiclass_probabilities"].numpy(), expected[MULTICLASS], atol=tolerance)


def test_stage2_trains_the_two_domain_backbone_and_gradcam_explains_its_spatial_branch(gan_images, tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.training.stage2 import train_stage2

    config = apply_method(load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 2}), "dnadet_spectral")
    assert config.model.backbone == "dnadet_spectral" and config.train.loss == "pcl"
    start = Detector(TwoDomainEncoder(width=config.model.width, name="encoder"), {}, {}, PREPROCESSING, {})
    save_detector(start, str(tmp_path / "start"))
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, init_model=str(tmp_path / "start"), verbose=0)
    detector = load_detector(result.model_dir)
    assert isinstance(detector.backbone, TwoDomainEncoder) and sorted(detector.class_names) == ["dcgan", "mmdgan", "progan", "real"]
    for layer in ("block1_conv", "spectral1_conv", "fusion_dense"):  # both branches and the fusion were trained from the start
        assert not np.allclose(start.backbone.get_layer(layer).get_weights()[0], detector.backbone.get_layer(layer).get_weights()[0])
    images = random_images(2, 64, seed=3)
    assert np.all(np.isfinite(detector.predict(images)[MULTICLASS]))
    heatmaps = GradCAM(detector)(images).heatmaps
    assert heatmaps.shape == (2, 64, 64) and np.all(np.isfinite(heatmaps)) and heatmaps.max() > heatmaps.min()
    assert os.path.isfile(os.path.join(result.run_dir, "gradcam", "epoch_001.png"))  # the training callback's evidence


def test_spectral_only_trains_without_gradcam_evidence_and_refuses_gradcam(gan_images, tmp_path):
    from tfdnadet.config import load_config
    from tfdnadet.training.stage2 import train_stage2

    config = apply_method(load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 1}), "spectral")
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, verbose=0)
    detector = load_detector(result.model_dir)
    assert isinstance(detector.backbone, SpectralEncoder) and not os.path.exists(os.path.join(result.run_dir, "gradcam", "epoch_001.png"))
    with pytest.raises(TfdnadetError, match="SpectralEncoder backbone has no block 4"):
        GradCAM(detector)
