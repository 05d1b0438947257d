import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnadet.config import load_config
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.backbones import CLOSED_FORM, GRADIENT, backbone_names, backbone_spec, create_backbone
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing, patch_grid
from tfdnadet.models.model_dir import load_detector, save_detector
from tfdnadet.models.encoder import HIGHPASS_GAIN, BatchNormalization, Conv2D, Encoder, HighPass
from tfdnadet.models.ensemble import EnsembleEncoder
from tfdnadet.models.heads import MulticlassHead, ProjectionHead


def check_keras_round_trip(model, inputs, tmp_path):
    """The shared check for every model class: config round trip, .keras save/load in safe mode, same outputs."""
    rebuilt = model.__class__.from_config(model.get_config())
    assert rebuilt.count_params() == model.count_params()
    path = str(tmp_path / f"{model.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(inputs)), keras.ops.convert_to_numpy(loaded(inputs)))


def test_encoder_follows_table_7():
    encoder = Encoder(width=1.0)
    shapes = [encoder.get_layer(f"block{i}").output.shape[-1] for i in range(1, 9)]
    assert shapes == [64, 64, 128, 128, 256, 256, 512, 512]
    feature_map, features = encoder.feature_model(4)(np.zeros((1, 64, 64, 3), np.float32))
    assert feature_map.shape == (1, 16, 16, 128) and features.shape == (1, 512)
    # Fully convolutional: a 512 px full image and a 64 px patch give the same feature size.
    assert encoder(np.zeros((1, 96, 96, 3), np.float32)).shape == (1, 512)
    assert Encoder(width=0.25)(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 128)
    with pytest.raises(TfdnadetError, match="layer"):
        encoder.feature_model(9)


def test_fused_batch_norm_matches_keras_batch_norm(tmp_path):
    maps = tf.random.stateless_normal([6, 5, 5, 4], [1, 2]) * 3.0 + 1.5
    fused, plain = BatchNormalization(momentum=0.9, epsilon=1e-5), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused.build(maps.shape), plain.build(maps.shape)
    weights = [np.linspace(0.5, 2.0, 4), np.linspace(-1.0, 1.0, 4), np.linspace(-0.5, 0.5, 4), np.linspace(0.5, 1.5, 4)]
    fused.set_weights(weights), plain.set_weights(weights)
    np.testing.assert_allclose(fused(maps, training=False), plain(maps, training=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused(maps, training=True), plain(maps, training=True), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-6, atol=1e-6)
    # The moving variance averages the unbiased batch variance (n = 6 x 5 x 5 values per channel), as PyTorch's does.
    n = 150
    batch_variance = tf.math.reduce_variance(maps, axis=[0, 1, 2]).numpy()
    np.testing.assert_allclose(fused.moving_variance, 0.9 * weights[3] + 0.1 * batch_variance * n / (n - 1), rtol=1e-5)
    bfloat16 = BatchNormalization(dtype="mixed_bfloat16")
    assert bfloat16(maps, training=True).dtype == tf.bfloat16 and bfloat16.moving_mean.dtype == tf.float32
    model = keras.Sequential([keras.Input((5, 5, 4)), BatchNormalization(name="bn")], name="fused_bn")
    check_keras_round_trip(model, maps, tmp_path)
    # A checkpoint written with Keras' layer (a run of an earlier release) loads into ours: resume keeps working.
    earlier = keras.Sequential([keras.Input((5, 5, 4)), keras.layers.BatchNormalization(name="bn")])
    earlier.layers[0].set_weights(weights)
    earlier.save_weights(str(tmp_path / "earlier.weights.h5"))
    model.load_weights(str(tmp_path / "earlier.weights.h5"))
    for loaded, saved in zip(model.layers[0].get_weights(), weights):
        np.testing.assert_allclose(loaded, saved, rtol=1e-6)


@pytest.mark.parametrize("size", [16, 15, 17])  # "SAME" pads 1 and 1 on even maps, 1 and 2 on odd ones at stride 2
@pytest.mark.parametrize("kernel, stride", [(4, 2), (3, 1)])
def test_conv_pads_one_on_every_side_for_static_and_unknown_sizes(size, kernel, stride, tmp_path):
    maps = tf.random.stateless_normal([2, size, size, 3], [3, size])
    conv = Conv2D(5, kernel, strides=stride)
    conv.build(maps.shape)
    expected = tf.nn.conv2d(tf.pad(maps, [[0, 0], [1, 1], [1, 1], [0, 0]]), conv.kernel, stride, "VALID") + conv.bias
    unknown = tf.function(conv, input_signature=[tf.TensorSpec([None, None, None, 3])])
    np.testing.assert_allclose(conv(maps), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(unknown(maps), expected, rtol=1e-5, atol=1e-5)
    assert conv.compute_output_shape((None, size, size, 3)) == (None, *expected.shape[1:]) and "padding" not in conv.get_config()
    model = keras.Sequential([keras.Input((size, size, 3)), conv], name="padded_conv")
    check_keras_round_trip(model, maps, tmp_path)
    # A checkpoint written with a ZeroPadding2D layer before Keras' Conv2D (an earlier release's encoder) loads.
    earlier = keras.Sequential([keras.Input((size, size, 3)), keras.layers.ZeroPadding2D(1), keras.layers.Conv2D(5, kernel, stride)])
    earlier.save_weights(str(tmp_path / "earlier.weights.h5"))
    model.load_weights(str(tmp_path / "earlier.weights.h5"))
    np.testing.assert_allclose(model(maps), earlier(maps), rtol=1e-5, atol=1e-5)


def test_highpass_input_filter_feeds_the_encoder_the_noise_residual(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (2, 12, 12, 3)).astype("float32")
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    means = sum(padded[:, i : i + 12, j : j + 12] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(HighPass()(images), HIGHPASS_GAIN * (images - means), atol=1e-5)
    np.testing.assert_allclose(HighPass()(np.full((1, 8, 8, 3), 0.7, np.float32)), 0, atol=1e-6)  # flat: no residual

    encoder = Encoder(width=0.125, input_filter="highpass", dtype="mixed_bfloat16", name="encoder")
    assert encoder.get_layer("highpass").compute_dtype == "float32"  # not rounded to bfloat16
    patches = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    check_keras_round_trip(encoder, patches, tmp_path)
    assert Encoder.from_config(encoder.get_config()).input_filter == "highpass"
    plain = Encoder(width=0.125, dtype="mixed_bfloat16")
    plain.set_weights(encoder.get_weights())  # same weights, other input: other features
    assert not np.allclose(plain(patches), encoder(patches))
    with pytest.raises(TfdnadetError, match="Unknown input filter 'sobel'"):
        Encoder(width=0.125, input_filter="sobel")


def test_an_ensemble_keeps_its_members_input_filter():
    members = [Encoder(width=0.125, input_filter="highpass", name=f"m{i}") for i in range(2)]
    ensemble = EnsembleEncoder.from_members(members, [0, 1])
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(ensemble(images), np.concatenate([members[0](images), members[1](images)], axis=1), atol=1e-5)
    np.testing.assert_allclose(ensemble.member_encoder(1)(images), members[1](images), atol=1e-6)
    with pytest.raises(TfdnadetError, match="one model.input_filter"):
        EnsembleEncoder.from_members([members[0], Encoder(width=0.125)], [0, 1])


@pytest.mark.parametrize("backbone", backbone_names(GRADIENT))
def test_every_backbone_round_trips(backbone, tmp_path):
    model = create_backbone(backbone, width=0.125, name="encoder")
    check_keras_round_trip(model, np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32"), tmp_path)


@pytest.mark.parametrize("backbone", backbone_names(CLOSED_FORM))
def test_every_closed_form_backbone_round_trips_and_fits_a_head(backbone, tmp_path):
    model = create_backbone(backbone, image_size=16, name="encoder")
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    check_keras_round_trip(model, images, tmp_path)
    head = model.fit_head(keras.ops.convert_to_numpy(model(images)), np.array([0, 1, 0, 1]), 2)
    assert head.kind == MULTICLASS and head(model(images)).shape == (4, 2)


def test_the_registry_names_every_backbone_and_refuses_unknown_ones():
    assert backbone_names(GRADIENT) == ["attnet", "dct_cnn", "dnadet", "dnadet_spectral", "spectral"] and backbone_names(CLOSED_FORM) == ["prnu"]
    with pytest.raises(TfdnadetError, match="Unknown backbone. Received: backbone='resnet'"):
        backbone_spec("resnet")


def test_heads_round_trip_and_projection_is_unit_norm(tmp_path):
    features = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    projection = ProjectionHead(16, 32, 8, name="projection")
    np.testing.assert_allclose(np.linalg.norm(projection(features), axis=1), 1.0, rtol=1e-5)
    check_keras_round_trip(projection, features, tmp_path)
    check_keras_round_trip(MulticlassHead(16, 5, name="multiclass"), features, tmp_path)


def test_mixed_precision_keeps_outputs_float32():
    encoder = Encoder(width=0.125, dtype="mixed_float16")
    features = encoder(np.zeros((2, 32, 32, 3), np.float32))
    assert keras.backend.standardize_dtype(features.dtype) == "float16"
    assert keras.backend.standardize_dtype(MulticlassHead(encoder.feature_dim, 3)(features).dtype) == "float32"
    assert keras.backend.standardize_dtype(ProjectionHead(encoder.feature_dim, 16, 8, dtype="mixed_float16")(features).dtype) == "float32"


def make_detector(width=0.125, classes=("real", "progan", "sngan")):
    backbone = Encoder(width=width, name="encoder")
    detector = Detector(backbone, {}, {}, Preprocessing(base_size=32, input_size=64, patch_size=32, max_pixels=10**8), {})
    detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, len(classes), name="multiclass"), {"class_names": list(classes)})
    return detector


def test_detector_directory_round_trip(tmp_path):
    detector = make_detector()
    images = np.random.default_rng(1).uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    save_detector(detector, str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path / "model")) == ["backbone.keras", "detector.json", "heads"]
    assert sorted(os.listdir(tmp_path / "model" / "heads" / MULTICLASS)) == ["head.json", "head.keras"]
    loaded = load_detector(str(tmp_path / "model"))
    assert loaded.class_names == ["real", "progan", "sngan"] and loaded.preprocessing == detector.preprocessing
    saved = json.loads((tmp_path / "model" / "detector.json").read_text())["preprocessing"]
    assert saved == {
        "base_size": 32, "input_size": 64, "patch_size": 32, "max_pixels": 10**8, "predict_on": "whole", "aggregation": "mean_probability",
        "grid_stride": None, "grid_scales": [1.0],
    }
    np.testing.assert_array_equal(detector.predict(images)[MULTICLASS], loaded.predict(images)[MULTICLASS])
    np.testing.assert_allclose(loaded.predict(images)[MULTICLASS].sum(axis=1), 1.0, rtol=1e-5)
    # Saving again over an existing model directory replaces it whole.
    save_detector(make_detector(), str(tmp_path / "model"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_patch_grid_tiles_row_by_row():
    images = tf.reshape(tf.range(2 * 4 * 4, dtype=tf.float32), [2, 4, 4, 1])
    patches, count = patch_grid(images, 2)
    assert count == 4 and patches.shape == (8, 2, 2, 1)
    np.testing.assert_array_equal(patches[1, :, :, 0], [[2, 3], [6, 7]])  # first image, top right
    np.testing.assert_array_equal(patches[4, :, :, 0], [[16, 17], [20, 21]])  # second image, top left


def test_predict_on_patches_is_the_mean_over_the_patch_grid():
    detector = make_detector()
    images = np.random.default_rng(2).uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    per_patch = [detector.predict(images[:, y : y + 32, x : x + 32])[MULTICLASS] for y in (0, 32) for x in (0, 32)]
    whole = detector.predict(images)[MULTICLASS]
    on_patches = detector.with_preprocessing(predict_on="patches").predict(images)[MULTICLASS]
    np.testing.assert_allclose(on_patches, np.mean(per_patch, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(on_patches, whole, atol=1e-4)
    with pytest.raises(TfdnadetError, match="data.predict_on must be one of"):
        load_config("tiny", {"data.predict_on": "tiles"})


def test_head_from_another_backbone_is_refused(tmp_path):
    save_detector(make_detector(), str(tmp_path / "a"))
    save_detector(make_detector(), str(tmp_path / "b"))
    os.replace(tmp_path / "b" / "heads" / MULTICLASS, tmp_path / "a" / "heads" / "other")
    with pytest.raises(TfdnadetError, match="another backbone"):
        load_detector(str(tmp_path / "a"))
    with pytest.raises(TfdnadetError, match="not found"):
        load_detector(str(tmp_path / "missing"))


def test_features_are_on_the_grid_the_model_predicts_on():
    detector = make_detector().with_preprocessing(predict_on="patches")
    images = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    probabilities, features = detector.predict_with_features(images, ["pool", "block4"])
    assert features["pool"].shape == (2, 4, detector.backbone.feature_dim) and features["block4"].shape[:2] == (2, 4)
    top_right = detector.backbone(images[:, :32, 32:], training=False)
    np.testing.assert_allclose(features["pool"][:, 1], top_right, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probabilities[MULTICLASS], detector.predict(images)[MULTICLASS], rtol=1e-5, atol=1e-6)
    whole = make_detector().predict_with_features(images, ["pool"])[1]["pool"]
    assert whole.shape == (2, 1, detector.backbone.feature_dim)


def test_preprocessing_is_typed_and_refuses_unknown_or_bad_fields():
    with pytest.raises(TfdnadetError, match="Unknown preprocessing keys: tile_size"):
        Preprocessing.from_dict({"base_size": 32, "input_size": 64, "patch_size": 32, "max_pixels": 100, "tile_size": 8})
    with pytest.raises(TfdnadetError, match="Missing preprocessing keys: max_pixels"):
        Preprocessing.from_dict({"base_size": 32, "input_size": 64, "patch_size": 32})
    with pytest.raises(TfdnadetError, match="predict_on must be one of"):
        Preprocessing(32, 64, 32, 100, predict_on="tiles")
    with pytest.raises(TfdnadetError, match="input_size must be a positive integer"):
        Preprocessing(32, "64", 32, 100)
    with pytest.raises(TypeError, match="must be a Preprocessing"):
        Detector(Encoder(width=0.125), {}, {}, {"base_size": 32}, {})
    assert Preprocessing.from_data_config(load_config("tiny").data) == Preprocessing(32, 64, 32, 100_000_000, "patches")


def test_a_model_directory_of_the_previous_version_still_loads(tmp_path):
    """detector.json written before predict_on and aggregation existed: a plain dict of the four sizes."""
    detector = make_detector()
    save_detector(detector, str(tmp_path / "model"))
    path = tmp_path / "model" / "detector.json"
    metadata = json.loads(path.read_text())
    metadata["preprocessing"] = {"base_size": 32, "input_size": 64, "patch_size": 32, "max_pixels": 10**8}
    path.write_text(json.dumps(metadata))
    loaded = load_detector(str(tmp_path / "model"))
    assert loaded.preprocessing == Preprocessing(32, 64, 32, 10**8, predict_on="whole", aggregation="mean_probability")
    images = np.random.default_rng(4).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(images)[MULTICLASS], detector.predict(images)[MULTICLASS])
    metadata["preprocessing"]["crop"] = 3
    path.write_text(json.dumps(metadata))
    with pytest.raises(TfdnadetError, match=r"detector.json: Unknown preprocessing keys: crop"):
        load_detector(str(tmp_path / "model"))
