"""Baselines and the Base ablation run through the same train/evaluate path as DNA-Det."""

import keras
import numpy as np
import pytest

from conftest import run_cli
from tfdnadet.config import load_config
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_dataset
from tfdnadet.methods import apply_method
from tfdnadet.models.baselines import DCTSpectrum, NoiseResidual, PRNUResidual
from tfdnadet.models.model_dir import load_detector
from tfdnadet.models.backbones import create_backbone


def test_dct_spectrum_matches_a_numpy_dct():
    from scipy.fft import dctn

    image = np.random.default_rng(0).uniform(-1, 1, (1, 8, 8, 3)).astype("float32")
    expected = np.log(np.abs(dctn(image[0], type=2, norm="ortho", axes=(0, 1))) + 1.0)
    np.testing.assert_allclose(DCTSpectrum()(image)[0], expected, atol=1e-5)


def test_noise_residual_removes_smooth_content():
    ramp = np.tile(np.linspace(-1, 1, 16, dtype="float32")[None, :, None], (16, 1, 3))[None]
    noisy = ramp + np.random.default_rng(0).normal(0, 0.1, ramp.shape).astype("float32")
    smooth, rough = NoiseResidual()(ramp), NoiseResidual()(noisy)
    assert float(np.abs(smooth[:, 1:-1, 1:-1]).max()) < 1e-5 and float(np.abs(rough).std()) > 0.03


@pytest.mark.parametrize("name", ["attnet", "dct_cnn"])
def test_baseline_backbones_round_trip(name, tmp_path):
    model = create_backbone(name, width=0.125, name="encoder")
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(model(images), loaded(images), atol=1e-6)
    assert model(images).shape == (2, model.feature_dim)


def test_methods_change_the_config():
    config = load_config("tiny")
    base = apply_method(config, "base")
    assert base.train.loss == "ce" and base.data.patch_size == base.data.input_size and base.data.patches_per_image == 1
    assert apply_method(config, "attnet").model.backbone == "attnet" and config.model.backbone == "dnadet"
    with pytest.raises(TfdnadetError, match="Unknown method"):
        apply_method(config, "resnet")
    filtered = load_config("tiny", {"model.input_filter": "highpass"})  # the DNA-Det encoder's input, not the baselines'
    assert [apply_method(filtered, m).model.input_filter for m in ("dnadet", "base", "attnet", "dct", "gfd")] == ["highpass", "highpass", "none", "none", "none"]


@pytest.mark.parametrize("method", ["prnu", "attnet", "dct", "base"])
def test_every_method_trains_and_evaluates(method, gan_images, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        ["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "run", "--config", "tiny", "--method", method,
         "--epochs", "2", "--steps-per-epoch", "4"],
        monkeypatch, capsys,
    )
    assert code == 0, err
    detector = load_detector(str(tmp_path / "run" / "model"))
    metrics = evaluate_dataset(detector, gan_images["test"])
    assert metrics["count"] == 84 and 0.0 <= metrics["accuracy"] <= 1.0
    if method == "prnu":
        assert isinstance(detector.backbone, PRNUResidual)
        # Fingerprints from seeds 0-1 are matched by correlation; real photos have no shared fingerprint.
        assert metrics["accuracy"] > 0.3
