"""Tests for the mini GAN zoo: generator architectures, bundled photos and the test-data maker."""

import numpy as np
import pytest
import keras
import tensorflow as tf
from PIL import Image

from tfdnadet.zoo import generators, photos, testdata
from tfdnadet.zoo.generators import DepthToSpace, ModulatedConv2D, PixelNorm

LATENT_DIM = 8
WIDTH = 16


def _latents(count=2):
    return generators.sample_latents(count, LATENT_DIM, seed=123)


def _build(name, image_size=16, seed=0):
    return generators.build_generator(
        name, image_size=image_size, latent_dim=LATENT_DIM, width=WIDTH, seed=seed
    )


def _render(model):
    return keras.ops.convert_to_numpy(model(_latents(), training=False))


# === Generators ===


def test_registry_holds_the_paper_architectures():
    expected = {"progan", "mmdgan", "sngan", "infomaxgan", "dcgan", "stylegan2"}
    assert expected <= set(generators.generator_names())
    assert generators.generator_names() == sorted(generators.GENERATORS)


@pytest.mark.parametrize("image_size", [16, 32])
@pytest.mark.parametrize("name", generators.generator_names())
def test_generator_output_shape_and_range(name, image_size):
    model = _build(name, image_size)
    images = _render(model)
    assert images.shape == (2, image_size, image_size, 3)
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.std() > 1e-3
    assert model.get_layer("tanh").output.shape[1:] == (image_size, image_size, 3)


@pytest.mark.parametrize("name", generators.generator_names())
def test_generator_weights_follow_the_seed(name):
    first = _render(_build(name, seed=0))
    same = _render(_build(name, seed=0))
    other = _render(_build(name, seed=1))
    np.testing.assert_array_equal(first, same)
    assert np.abs(first - other).mean() > 1e-3


def test_unknown_generator_lists_known_names():
    with pytest.raises(ValueError, match=r"Received: name='foo'\. Known: \[.*'progan'"):
        generators.build_generator("foo")


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 12}, {"image_size": 4}, {"latent_dim": 0}, {"width": 8}, {"width": 18}],
)
def test_build_generator_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError, match="Received"):
        generators.build_generator("progan", **kwargs)


def test_register_generator_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        generators.register_generator("progan")(lambda *args: None)


@pytest.mark.parametrize("name", ["progan", "mmdgan", "stylegan2"])
def test_keras_save_load_round_trip_in_safe_mode(name, tmp_path):
    model = _build(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_render(model), _render(loaded))


def test_sample_images_is_seeded_uint8_across_batches():
    model = _build("sngan")
    images = generators.sample_images(model, count=5, seed=7, batch_size=2)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, generators.sample_images(model, 5, seed=7, batch_size=5))
    assert not np.array_equal(images, generators.sample_images(model, 5, seed=8))
    with pytest.raises(ValueError, match="count"):
        generators.sample_images(model, count=0, seed=0)


def test_to_uint8_rounds_and_clips():
    values = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])
    np.testing.assert_array_equal(generators.to_uint8(values), [0, 0, 128, 255, 255, 255])


# === Custom layers ===


def test_depth_to_space_differs_from_nearest_upsampling():
    x = np.arange(2 * 3 * 3 * 4, dtype="float32").reshape(2, 3, 3, 4)
    d2s = keras.ops.convert_to_numpy(DepthToSpace(2, name="d2s")(x))
    nearest = keras.ops.convert_to_numpy(
        keras.layers.UpSampling2D(2, interpolation="nearest", name="up")(x[..., :1])
    )
    assert d2s.shape == nearest.shape == (2, 6, 6, 1)
    # Depth-to-space spreads the 4 channels of a pixel over its 2x2 output cell; nearest repeats one.
    np.testing.assert_array_equal(d2s[0, 0:2, 0:2, 0], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(nearest[0, 0:2, 0:2, 0], [[0, 0], [0, 0]])
    assert not np.array_equal(d2s, nearest)
    assert DepthToSpace(2).compute_output_shape((None, 3, 3, 4)) == (None, 6, 6, 1)


def test_depth_to_space_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible"):
        DepthToSpace(2)(np.zeros((1, 2, 2, 6), "float32"))


def test_pixel_norm_gives_unit_mean_square_per_pixel():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32") * 5.0
    y = keras.ops.convert_to_numpy(PixelNorm(name="pn")(x))
    np.testing.assert_allclose(np.mean(y**2, axis=-1), 1.0, rtol=1e-4)


def test_modulated_conv_matches_per_sample_modulated_kernels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    w = rng.normal(size=(2, 4)).astype("float32")
    layer = ModulatedConv2D(6, 3, name="modconv")
    y = keras.ops.convert_to_numpy(layer([x, w]))
    kernel, bias, style_kernel, style_bias = (v.numpy() for v in layer.weights)
    for b in range(2):
        style = w[b] @ style_kernel + style_bias
        modulated = kernel * style[None, None, :, None]
        modulated /= np.sqrt(np.sum(modulated**2, axis=(0, 1, 2)) + layer.epsilon)
        expected = tf.nn.conv2d(x[b : b + 1], modulated, 1, "SAME").numpy()[0] + bias
        np.testing.assert_allclose(y[b], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "layer",
    [
        PixelNorm(epsilon=1e-6, name="pn"),
        DepthToSpace(4, name="d2s"),
        ModulatedConv2D(5, 1, demodulate=False, name="mc"),
        generators.ConstantInput(7, 4, name="const"),
    ],
)
def test_custom_layer_config_round_trip(layer):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


# === Photos ===


def test_photo_sets_are_disjoint_and_non_empty():
    set_a, set_b = photos.load_photos("A"), photos.load_photos("B")
    assert set_a and set_b
    assert not set(photos.photo_names("A")) & set(photos.photo_names("B"))
    fingerprints_a = {(p.shape, p.tobytes()[:4096]) for p in set_a}
    assert not any((p.shape, p.tobytes()[:4096]) in fingerprints_a for p in set_b)
    assert len(photos.load_photos("all")) == len(set_a) + len(set_b)
    for photo in set_a + set_b:
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3


def test_load_photos_rejects_unknown_content():
    with pytest.raises(ValueError, match=r"content='C'.*\['A', 'B', 'all'\]"):
        photos.load_photos("C")


def test_random_crops_shape_and_determinism():
    source = photos.load_photos("A")
    crops = photos.random_crops(source, count=6, size=24, seed=3)
    assert crops.shape == (6, 24, 24, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, photos.random_crops(source, 6, 24, seed=3))
    assert not np.array_equal(crops, photos.random_crops(source, 6, 24, seed=4))
    assert crops.reshape(6, -1).std(axis=1).min() > 0


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"size": -1}, {"photos": []}])
def test_random_crops_rejects_bad_arguments(kwargs):
    arguments = {"photos": photos.load_photos("A"), "count": 2, "size": 8, "seed": 0, **kwargs}
    with pytest.raises(ValueError):
        photos.random_crops(**arguments)


# === Test-data maker ===


def test_make_test_dataset_writes_non_constant_images(tmp_path):
    written = testdata.make_test_dataset(tmp_path)
    assert set(written) == {"progan", "mmdgan", "dcgan", "real"}
    for architecture in ("progan", "mmdgan", "dcgan"):
        assert [seed for seed, _ in written[architecture]] == [0, 1, 2]
        for seed, folder in written[architecture]:
            assert folder == tmp_path / architecture / f"seed{seed}"
            assert len(list(folder.glob("*.png"))) == 24
    assert written["real"] == [(0, tmp_path / "real")]
    assert len(list((tmp_path / "real").glob("*.png"))) == 48

    for name, entries in written.items():
        for _, folder in entries:
            image = np.asarray(Image.open(sorted(folder.glob("*.png"))[0]))
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            # Generated images are standardised to the full range; real crops may be smooth.
            min_std = 2 if name == "real" else 40
            assert image.std() > min_std, f"{folder} holds a nearly flat image"
    seed0, seed1 = (
        np.asarray(Image.open(tmp_path / "progan" / f"seed{k}" / "0000.png")) for k in (0, 1)
    )
    assert not np.array_equal(seed0, seed1)


def test_make_test_dataset_small_and_without_real(tmp_path):
    written = testdata.make_test_dataset(
        tmp_path,
        architectures=("stylegan2",),
        seeds=(5,),
        images_per_model=2,
        image_size=16,
        real_images=0,
    )
    assert written == {"stylegan2": [(5, tmp_path / "stylegan2" / "seed5")]}
    assert not (tmp_path / "real").exists()
    with pytest.raises(ValueError, match="seeds"):
        testdata.make_test_dataset(tmp_path, seeds=(1, 1))
