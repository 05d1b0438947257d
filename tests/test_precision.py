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


# Inference in bfloat16 against float32 on the trained tiny model: bfloat16 keeps 8 bits of mantissa, so after
# eight conv layers the probabilities may differ by a few hundredths, and only near-ties can change the answer.
BF16_PROBABILITY_TOLERANCE = 0.05
BF16_SAME_TOP_CLASS = 0.95


def _machine_precision(monkeypatch, policy):
    from tfdnadet.models import detector

    monkeypatch.setattr(detector, "resolve_precision", lambda value: policy if value == "auto" else value)


def _test_images(detector, gan_images):
    from tfdnadet.data.sources import read_dataset
    from tfdnadet.inference import load_for_detector

    images = read_dataset(gan_images["test"], detector.class_names)
    return load_for_detector(detector, images.paths, images.labels)


def test_bfloat16_inference_matches_float32_within_tolerance(trained_run, gan_images, monkeypatch):
    from tfdnadet.inference import predict_loaded
    from tfdnadet.models.detector import MULTICLASS
    from tfdnadet.models.model_dir import load_detector

    _machine_precision(monkeypatch, "mixed_bfloat16")  # bfloat16 is what this machine computes fastest
    float32 = load_detector(trained_run.model_dir)
    bfloat16 = float32.in_precision("mixed_bfloat16")
    assert (float32.precision, bfloat16.precision) == ("float32", "mixed_bfloat16")
    assert bfloat16.backbone.get_layer("block1_conv").compute_dtype == "bfloat16"
    assert bfloat16.for_inference() is bfloat16 and float32.for_inference() is float32  # each in its own precision
    loaded = _test_images(float32, gan_images)
    expected = predict_loaded(float32, loaded)[MULTICLASS]
    served = predict_loaded(bfloat16, loaded)[MULTICLASS]
    assert served.dtype == np.float32 and served.shape == expected.shape
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(served - expected).max() <= BF16_PROBABILITY_TOLERANCE
    assert np.abs(served - expected).max() > 0  # it really computed in bfloat16
    assert np.mean(served.argmax(axis=1) == expected.argmax(axis=1)) >= BF16_SAME_TOP_CLASS


def test_a_bfloat16_model_predicts_in_float32_where_the_machine_lacks_bfloat16(trained_run, monkeypatch):
    from tfdnadet.models.model_dir import load_detector

    _machine_precision(monkeypatch, "float32")
    float32 = load_detector(trained_run.model_dir)
    bfloat16 = float32.in_precision("mixed_bfloat16")
    images = np.random.default_rng(0).uniform(-1, 1, (4, *[float32.preprocessing.input_size] * 2, 3)).astype("float32")
    assert bfloat16.for_inference().precision == "float32"
    for name, value in bfloat16.predict(images).items():
        np.testing.assert_allclose(value, float32.predict(images)[name], atol=1e-6)
    # The float32 twin follows the detector's weights (as while a head trains).
    kernel = bfloat16.backbone.get_layer("block1_conv").kernel
    kernel.assign(kernel * 0.5)
    expected = bfloat16.float32()  # a fresh float32 copy of the changed weights
    for name, value in bfloat16.predict(images).items():
        np.testing.assert_allclose(value, expected.predict(images)[name], atol=1e-6)


def test_bfloat16_export_has_float32_inputs_and_outputs_and_matches_float32(trained_run, gan_images, tmp_path, monkeypatch):
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    from tfdnadet.data.pipeline import make_image_dataset
    from tfdnadet.errors import TfdnadetError
    from tfdnadet.export import check_export, export_model
    from tfdnadet.inference import predict_loaded
    from tfdnadet.models.detector import MULTICLASS
    from tfdnadet.models.model_dir import load_detector, save_detector

    def graph_dtypes(path):
        saved = saved_model_pb2.SavedModel.FromString(open(os.path.join(path, "saved_model.pb"), "rb").read())
        graph = saved.meta_graphs[0].graph_def
        nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
        return {attr.type for node in nodes for attr in node.attr.values()} | {t for n in nodes for a in n.attr.values() for t in a.list.type}

    float32 = load_detector(trained_run.model_dir)
    loaded = _test_images(float32, gan_images)
    images = np.concatenate(list(make_image_dataset(loaded.images, None, float32.preprocessing.input_size, 64)))
    save_detector(float32.in_precision("mixed_bfloat16"), str(tmp_path / "bf16"))
    _machine_precision(monkeypatch, "mixed_bfloat16")
    result = export_model(str(tmp_path / "bf16"), "bf16", str(tmp_path / "base"))  # auto keeps bfloat16 here
    assert result.precision == "mixed_bfloat16" and types_pb2.DT_BFLOAT16 in graph_dtypes(result.path)
    signature = tf.saved_model.load(result.path).signatures["predict_images"]
    outputs = signature(images=tf.constant(images))
    assert outputs[f"{MULTICLASS}_probabilities"].dtype == tf.float32
    served = outputs[f"{MULTICLASS}_probabilities"].numpy()
    expected = predict_loaded(float32, loaded)[MULTICLASS]
    assert np.abs(served - expected).max() <= BF16_PROBABILITY_TOLERANCE
    assert np.mean(served.argmax(axis=1) == expected.argmax(axis=1)) >= BF16_SAME_TOP_CLASS
    assert check_export(result.path)["requests"]  # REST-encodable outputs, warm-up requests answered

    _machine_precision(monkeypatch, "float32")  # a machine without native bfloat16: auto exports float32
    result = export_model(str(tmp_path / "bf16"), "bf16", str(tmp_path / "base"))
    assert result.precision == "float32" and types_pb2.DT_BFLOAT16 not in graph_dtypes(result.path)
    with pytest.raises(TfdnadetError, match="precision must be one of auto, float32, mixed_bfloat16"):
        export_model(str(tmp_path / "bf16"), "bf16", str(tmp_path / "base"), precision="float16")
