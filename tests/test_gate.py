"""A clean expert, a robust expert and a degradation gate in one model (tfdnadet.models.gate)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

from tfdnadet.config import load_config
from tfdnadet.data.perturb import apply_attack
from tfdnadet.data.preprocess import to_model_input
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import load_labelled
from tfdnadet.explain.gradcam import GradCAM
from tfdnadet.export import export_model
from tfdnadet.models.detector import MULTICLASS, POOL_LAYER
from tfdnadet.models.ensemble import EnsembleEncoder
from tfdnadet.models.gate import GATE_LAYER, ChannelMoments, GatedMulticlassHead
from tfdnadet.models.model_dir import load_detector
from tfdnadet.training.gate import fit_logistic
from tfdnadet.training.stage1 import train_stage1
from tfdnadet.training.stage2 import train_stage2

SETTINGS = {"train.precision": "float32", "train.gradcam_images": 0, "stage1.epochs": 1, "stage1.crops": 32, "train.finetune_from_block": 5}


@pytest.fixture(scope="module")
def gated_run(gan_images, tmp_path_factory):
    """One stage-1 encoder fine-tuned twice on clean images and once under blur and JPEG (blocks 1-4 shared)."""
    work = tmp_path_factory.mktemp("gated")
    robust = {"robust.runs_per_encoder": 1, "robust.augment": [{"op": "blur", "p": 1.0}, {"op": "jpeg", "p": 0.5}], "robust.epochs": 3}
    config = load_config("tiny", {**SETTINGS, "train.runs_per_encoder": 2, **robust})
    stage1 = train_stage1(None, str(work / "stage1"), config, verbose=0)
    stage2 = train_stage2(gan_images["train"], str(work / "stage2"), config, init_model=stage1.model_dir, verbose=0)
    return {"stage2": stage2, "config": config}


def members(run):
    return [load_detector(os.path.join(run.run_dir, "members", f"run{k}", "model")) for k in range(3)]


def test_the_robust_run_trains_under_its_attacks_and_the_clean_runs_do_not(gated_run):
    clean, _, robust = members(gated_run["stage2"])
    assert clean.config["data"]["augment"] == [] and clean.config["train"]["epochs"] == gated_run["config"].train.epochs == 2
    assert robust.config["data"]["augment"] == gated_run["config"].robust.augment and robust.config["train"]["epochs"] == 3
    detector = load_detector(gated_run["stage2"].model_dir)
    assert (detector.backbone.stems, detector.backbone.robust_members) == ([0, 0, 0], 1)
    assert isinstance(detector.heads[MULTICLASS], GatedMulticlassHead)
    assert detector.config["ensemble"]["robust_members"] == 1


def test_logits_mix_the_experts_means_by_the_gate(gated_run):
    detector = load_detector(gated_run["stage2"].model_dir)
    runs = members(gated_run["stage2"])
    images = tf.random.uniform([3, 64, 64, 3], -1, 1, seed=2)
    features = detector.features(images, {POOL_LAYER})
    gate = features.maps[POOL_LAYER][:, -1:].numpy()
    logits = [run.logits(run.features(images, {POOL_LAYER}))[MULTICLASS].numpy().reshape(len(gate), -1) for run in runs]
    expected = (1.0 - gate) * (logits[0] + logits[1]) / 2.0 + gate * logits[2]
    np.testing.assert_allclose(detector.logits(features)[MULTICLASS].numpy().reshape(len(gate), -1), expected, atol=1e-4)


def test_the_gate_tells_degraded_training_images_from_clean_ones(gated_run, gan_images):
    detector = load_detector(gated_run["stage2"].model_dir)
    images = load_labelled(detector, gan_images["train"]).images[:64]

    def mean_gate(batch):
        cells = detector.grid(to_model_input(batch, detector.preprocessing.input_size))[0]
        return float(np.mean(detector.backbone(cells)[:, -1]))

    clean, blurred = mean_gate(images), mean_gate(apply_attack(images, "blur", 5))
    assert blurred > 0.5 > clean


def test_a_gated_model_reloads_exports_and_explains(gated_run, tmp_path):
    model_dir = gated_run["stage2"].model_dir
    detector = load_detector(model_dir)
    images = np.random.default_rng(0).uniform(-1, 1, [2, 64, 64, 3]).astype(np.float32)
    exported = tf.saved_model.load(export_model(model_dir, "detector", str(tmp_path)).path)
    served = exported.signatures["predict_images"](images=tf.constant(images))["multiclass_probabilities"]
    np.testing.assert_allclose(served, detector.predict(images)[MULTICLASS], atol=1e-5)
    np.testing.assert_allclose(load_detector(model_dir).predict(images)[MULTICLASS], detector.predict(images)[MULTICLASS], atol=1e-6)
    maps = GradCAM(detector)(images).heatmaps
    assert maps.shape == (2, 64, 64) and np.all((maps >= 0) & (maps <= 1)) and maps.max() > 0


def test_fit_logistic_folds_the_standardising_into_the_weights():
    rng = np.random.default_rng(0)
    features = rng.normal([5.0, -3.0, 100.0], [1.0, 0.1, 20.0], size=(400, 3))
    targets = (features[:, 0] + 10 * features[:, 1] + rng.normal(0, 0.5, 400) > 5.0 - 30.0).astype(float)
    kernel, bias = fit_logistic(features, targets)
    standardised = (features - features.mean(0)) / (features.std(0) + 1e-6)
    reference = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(standardised, targets)
    np.testing.assert_allclose(tf.sigmoid(features @ kernel + bias)[:, 0], reference.predict_proba(standardised)[:, 1], atol=1e-4)


def test_channel_moments_are_each_channels_mean_and_spread():
    maps = np.random.default_rng(1).normal(2.0, 3.0, [2, 5, 4, 3]).astype(np.float32)
    moments = ChannelMoments()(maps).numpy()
    np.testing.assert_allclose(moments, np.concatenate([maps.mean((1, 2)), maps.std((1, 2))], axis=-1), atol=1e-5)


def test_the_gate_needs_a_clean_member():
    with pytest.raises(TfdnadetError, match="robust_members must leave a clean member"):
        EnsembleEncoder([0, 0], 4, 0.25, robust_members=2)
    assert EnsembleEncoder([0, 0], 4, 0.25, robust_members=1).get_layer(GATE_LAYER).units == 1
