"""`precision: auto` and what stays float32 under mixed_bfloat16."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfdnadet import precision
from tfdnadet.config import load_config
from tfdnadet.losses import supcon_loss
from tfdnadet.precision import describe_precision, resolve_precision
from tfdnadet.training.trainer import build_patch_model


def test_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert resolve_precision("auto") == "mixed_bfloat16"
    assert describe_precision("auto") == "mixed_bfloat16 (auto: CPU has AVX512_BF16)"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_tile", "amx_bf16"})
    assert resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert resolve_precision("auto") == "float32"
    assert describe_precision("auto") == "float32 (auto: no native bfloat16 on this machine)"
    for explicit in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert resolve_precision(explicit) == describe_precision(explicit) == explicit


@pytest.mark.parametrize("capabilities, expected", [([(8, 0)], "mixed_bfloat16"), ([(9, 0), (7, 5)], "float32")])
def test_auto_on_gpus_needs_compute_capability_8(monkeypatch, capabilities, expected):
    gpus = [f"gpu{i}" for i in range(len(capabilities))]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus)
    details = dict(zip(gpus, capabilities))
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: {"compute_capability": details[gpu]})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})  # ignored: the GPUs do the work
    assert resolve_precision("auto") == expected


def test_every_builtin_config_defaults_to_auto():
    for name in ("paper", "cpu", "tiny"):
        assert load_config(name).train.precision == "auto"


def test_mixed_bfloat16_keeps_logits_similarities_losses_and_weights_float32():
    config = load_config("tiny", {"train.precision": "mixed_bfloat16"})
    model = build_patch_model(config, num_classes=3)
    patches = tf.random.uniform([12, 32, 32, 3], -1, 1)
    labels = tf.constant(np.arange(12) % 3, tf.int32)
    outputs = model(patches, training=True)
    assert model.backbone.get_layer("block1_conv").compute_dtype == "bfloat16"
    assert outputs["logits"].dtype == outputs["projection"].dtype == tf.float32
    assert supcon_loss(tf.cast(outputs["projection"], tf.bfloat16), labels).dtype == tf.float32
    loss = model.compute_loss(y=labels, y_pred=outputs)
    assert loss.dtype == tf.float32 and model.weighting.log_variances.dtype == "float32"
    history = model.fit(patches, labels, batch_size=12, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.any(model.weighting.log_variances.numpy() != 0)  # the uncertainty weights learn in float32


def test_a_run_records_the_precision_auto_resolved_to(gan_images, tmp_path):
    from tfdnadet.training.stage2 import train_stage2

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 1, "train.gradcam_images": 0})
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, verbose=0)
    resolved = resolve_precision("auto")
    assert yaml.safe_load(open(os.path.join(result.run_dir, "config.yaml")))["train"]["precision"] == resolved
    assert json.load(open(os.path.join(result.model_dir, "detector.json")))["config"]["train"]["precision"] == resolved
