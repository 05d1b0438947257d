import itertools
import json

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import run_cli
from tfdnadet.config import load_config
from tfdnadet.data import perturb
from tfdnadet.data.pipeline import make_patch_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.zoo.generators import build_generator, sample_latents, to_uint8

SEED = [3, 4]


def noise_images(count=6, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def grey(value=100, count=4, size=32):
    return np.full((count, size, size, 3), value, np.uint8)


@pytest.mark.parametrize("name", perturb.ATTACKS)
def test_attacks_keep_shape_and_are_deterministic_for_a_seed(name):
    images = noise_images()
    first = perturb.apply_attack(images, name, seed=1)
    assert first.shape == images.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, perturb.apply_attack(images, name, seed=1))
    assert not np.array_equal(first, perturb.apply_attack(images, name, seed=2))
    assert not np.array_equal(first, images)


def test_crop_zooms_into_a_5_to_20_percent_smaller_window():
    ramp = np.tile((np.arange(32) * 8).astype(np.uint8)[None, :, None], [32, 1, 3])[None].repeat(8, axis=0)
    cropped = perturb.crop(ramp, SEED).numpy().astype(float)
    slopes = (cropped[:, 16, -1, 0] - cropped[:, 16, 0, 0]) / 31
    # Resizing a window of (1 - cut) x 32 px back to 32 px scales the ramp's slope of 8 by (1 - cut).
    assert np.all(slopes >= 8 * 0.8 - 0.1) and np.all(slopes <= 8 * 0.95 + 0.1), slopes
    assert np.all(cropped[:, :, 0, 0] >= 0) and np.all(cropped[:, 16, 0, 0] <= 8 * 0.2 * 31 + 1)


def test_gaussian_blur_spreads_a_point_by_its_own_kernel_size_per_image():
    point = np.zeros((2, 21, 21, 3), np.uint8)
    point[:, 10, 10] = 255
    blurred = perturb.gaussian_blur(point, tf.constant([3, 9]), 9).numpy().astype(float)
    assert np.count_nonzero(blurred[0, ..., 0]) <= 9  # 3 x 3 support
    assert np.count_nonzero(blurred[1, ..., 0]) > 25
    assert abs(blurred[0, ..., 0].sum() - 255) < 10 and abs(blurred[1, ..., 0].sum() - 255) < 20
    np.testing.assert_array_equal(blurred[1, ..., 0], blurred[1, ..., 0].T)  # symmetric
    np.testing.assert_array_equal(perturb.blur(grey(), SEED).numpy(), grey())  # flat stays flat, borders included
    np.testing.assert_array_equal(perturb.blur(noise_images(), SEED, kernel_sizes=(1,)).numpy(), noise_images())


def test_jpeg_quality_sets_the_damage():
    images = perturb.blur(noise_images(), SEED, kernel_sizes=(5,)).numpy()  # smooth, as photos are
    low = perturb.jpeg(images, SEED, quality=(10, 10)).numpy().astype(float)
    high = perturb.jpeg(images, SEED, quality=(95, 95)).numpy().astype(float)
    assert np.abs(low - images).mean() > 2 * np.abs(high - images).mean()


def test_noise_has_the_variance_asked_for():
    changed = perturb.noise(grey(count=8, size=64), SEED, variance=(16.0, 16.0)).numpy().astype(float)
    std = (changed - 100).std()
    assert 3.8 < std < 4.3, std  # sqrt(16) plus rounding


def test_relight_changes_brightness_contrast_and_gamma():
    brighter = perturb.relight(grey(100), SEED, brightness=(0.1, 0.1), contrast=(1, 1), gamma=(1, 1)).numpy()
    assert np.all(brighter == 126)  # 100 + 25.5, rounded
    darker = perturb.relight(grey(128), SEED, brightness=(0, 0), contrast=(1, 1), gamma=(2, 2)).numpy()
    assert np.all(darker == 64)  # 255 * (128 / 255)^2
    halves = np.concatenate([grey(50, 1, 16), grey(150, 1, 16)], axis=2)
    flat = perturb.relight(halves, SEED, brightness=(0, 0), contrast=(0.5, 0.5), gamma=(1, 1)).numpy()
    assert flat[0, 0, 0, 0] == 75 and flat[0, 0, -1, 0] == 125  # half the distance to the mean of 100


def test_symmetry_gives_each_image_one_of_the_squares_eight_symmetries():
    images = noise_images(count=64, size=8)
    changed = perturb.symmetry(images, SEED).numpy()
    seen = set()
    for before, after in zip(images, changed):
        views = [np.rot90(before, k) for k in range(4)]
        views += [np.fliplr(view) for view in views]
        matches = [i for i, view in enumerate(views) if np.array_equal(view, after)]
        assert len(matches) == 1, "not a symmetry of the square"
        seen.add(matches[0])
    assert seen == set(range(8))  # 64 images draw every one of them
    np.testing.assert_array_equal(perturb.symmetry(images, SEED).numpy(), changed)


def test_transpose_swaps_rows_and_columns_of_the_images_it_picks():
    images = noise_images(count=64, size=8)
    changed = perturb.perturb(images, perturb.parse_augment([{"op": "transpose", "p": 0.5}]), SEED).numpy()
    transposed = [np.array_equal(after, before.transpose(1, 0, 2)) for before, after in zip(images, changed)]
    kept = [np.array_equal(after, before) for before, after in zip(images, changed)]
    assert all(t != k for t, k in zip(transposed, kept)) and 20 <= sum(transposed) <= 44


def channel_views(image) -> list:
    """The 48 images with the channels of `image` in another order, each kept or inverted."""
    return [
        np.stack([255 - image[..., c] if inverted else image[..., c] for c, inverted in zip(order, flips)], -1)
        for order in itertools.permutations(range(3))
        for flips in itertools.product((False, True), repeat=3)
    ]


def test_channels_gives_each_image_one_of_its_48_channel_orders_and_inversions():
    images = noise_images(count=400, size=4)
    changed = perturb.channels(images, SEED).numpy()
    seen = set()
    for before, after in zip(images, changed):
        matches = [i for i, view in enumerate(channel_views(before)) if np.array_equal(view, after)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(48))
    np.testing.assert_array_equal(perturb.channels(images, SEED).numpy(), changed)


@pytest.mark.parametrize("architecture, output_axis", [("progan", 3), ("dcgan", 2)])  # Conv2D, Conv2DTranspose
def test_channels_views_are_images_of_a_generator_with_its_rgb_layer_reordered_and_negated(architecture, output_axis):
    generator = build_generator(architecture, 32, latent_dim=16, width=16, seed=0)
    latents = sample_latents(4, 16, seed=0)
    before = to_uint8(generator(latents, training=False))
    order, signs = [2, 0, 1], np.array([-1.0, 1.0, -1.0], np.float32)
    to_rgb = generator.get_layer("to_rgb")
    kernel, bias = (w.numpy() for w in to_rgb.weights)
    shape = [1] * kernel.ndim
    shape[output_axis] = 3
    to_rgb.set_weights([np.take(kernel, order, axis=output_axis) * signs.reshape(shape), bias[order] * signs])
    after = to_uint8(generator(latents, training=False))
    view = np.stack([255 - before[..., c] if s < 0 else before[..., c] for c, s in zip(order, signs)], -1)
    assert np.abs(view.astype(int) - after).max() <= 1  # rounding ties
    assert np.mean(view == after) > 0.99
    assert any(np.array_equal(candidate, view[0]) for candidate in channel_views(before[0]))


def test_steps_apply_with_their_probability():
    images = noise_images(count=64, size=16)
    never = perturb.perturb(images, [perturb.Step("noise", 0.0)], SEED).numpy()
    np.testing.assert_array_equal(never, images)
    half = perturb.perturb(images, [perturb.Step("jpeg", 0.5)], SEED).numpy()
    changed = sum(not np.array_equal(a, b) for a, b in zip(half, images))
    assert 20 <= changed <= 44, changed
    combo = perturb.attack_steps("combo")
    assert [s.op for s in combo] == list(perturb.COMBINATION) and {s.p for s in combo} == {0.5}


def test_combo_op_trains_half_the_images_under_the_combination_attack():
    images = noise_images(count=64, size=16)
    step = perturb.parse_augment([{"op": "combo", "p": 0.5}])
    assert step == [perturb.Step("combo", 0.5)]
    half = perturb.make_augment([{"op": "combo", "p": 0.5}])(images, SEED).numpy()
    changed = [not np.array_equal(a, b) for a, b in zip(half, images)]
    assert 20 <= sum(changed) <= 44, sum(changed)
    whole = perturb.perturb(images, perturb.attack_steps("combo"), tf.random.experimental.stateless_split(tf.constant(SEED, tf.int64), 2)[0]).numpy()
    np.testing.assert_array_equal(half[changed], whole[changed])  # a chosen image takes the combination attack


def test_parse_augment_reads_the_config_format():
    steps = perturb.parse_augment([{"op": "jpeg", "p": 0.5, "quality": [30, 60]}, {"op": "blur", "kernel_sizes": [3, 5]}])
    assert steps == [perturb.Step("jpeg", 0.5, (("quality", (30, 60)),)), perturb.Step("blur", 1.0, (("kernel_sizes", (3, 5)),))]
    assert perturb.parse_augment([]) == []
    assert perturb.parse_augment("table5") == perturb.parse_augment(perturb.table5_augment())
    assert load_config("tiny", {"data.augment": "table5"}).data.augment == "table5"  # kept as written in config.yaml


@pytest.mark.parametrize(
    "entries, message",
    [
        ("jpeg", "must be table5 or a list"),
        (["jpeg"], r"data.augment\[0\] must be a mapping with an 'op' key"),
        ([{"op": "sharpen"}], "unknown op 'sharpen'. Known ops: crop, blur, jpeg, noise, relight, symmetry, transpose, channels"),
        ([{"op": "jpeg", "p": 1.5}], r"p must be a probability in \[0, 1\]"),
        ([{"op": "jpeg", "qualty": [1, 2]}], "op 'jpeg' has no parameter 'qualty'. Known: op, p, quality"),
        ([{"op": "jpeg", "quality": [80, 20]}], r"quality must be \[low, high\] with 1 <= low <= high <= 100"),
        ([{"op": "noise", "variance": 5}], r"variance must be \[low, high\]"),
        ([{"op": "blur", "kernel_sizes": [3, 4]}], "kernel_sizes must be a list of odd positive integers"),
    ],
)
def test_bad_augment_configs_are_clear_errors(entries, message):
    with pytest.raises(TfdnadetError, match=message):
        perturb.parse_augment(entries)
    with pytest.raises(TfdnadetError, match=message):
        load_config("tiny", {"data.augment": entries})


def test_cpu_config_documents_a_working_augmentation_option():
    from importlib import resources

    text = resources.files("tfdnadet.configs").joinpath("cpu.yaml").read_text()
    assert "`augment: table5`" in text
    steps = perturb.parse_augment(load_config("cpu", {"data.augment": "table5"}).data.augment)
    assert [s.op for s in steps] == list(perturb.COMBINATION) and {s.p for s in steps} == {0.5}


def test_unknown_attacks_are_refused():
    assert perturb.parse_attacks("all") == list(perturb.ATTACKS)
    assert perturb.parse_attacks("jpeg, noise") == ["jpeg", "noise"]
    with pytest.raises(TfdnadetError, match="Unknown attack 'rain'. Known attacks: crop, blur, jpeg, noise, relight, combo, all"):
        perturb.parse_attacks("jpeg,rain")
    with pytest.raises(TfdnadetError, match="Unknown attack 'symmetry'"):  # an augmentation, not a Table 5 attack
        perturb.parse_attacks("symmetry")


def test_augment_hook_changes_the_training_batches():
    config = load_config("tiny").data
    images = noise_images(count=12)
    labels = np.array([0] * 6 + [1] * 6, np.int32)
    white = [{"op": "relight", "brightness": [1, 1], "contrast": [1, 1], "gamma": [1, 1]}]
    patches, _ = next(iter(make_patch_dataset(images, labels, 2, config, augment=perturb.make_augment(white))))
    np.testing.assert_allclose(patches.numpy(), 1.0)  # every pixel pushed to white before patching
    augment = perturb.make_augment([{"op": "noise", "p": 1.0}])
    first, again, second = (augment(images, seed).numpy() for seed in ([0, 0], [0, 0], [0, 1]))
    assert np.array_equal(first, again) and not np.array_equal(first, second)  # a new draw per batch, repeatable


def test_stage2_trains_with_augmentation_from_the_config(gan_images, tmp_path):
    from tfdnadet.training.stage2 import train_stage2

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 2, "data.augment": [{"op": "jpeg", "p": 0.5}, {"op": "crop", "p": 0.5}]})
    result = train_stage2(gan_images["train"], str(tmp_path / "run"), config, verbose=0)
    assert result.steps == 2
    saved = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert saved["data"]["augment"] == [{"op": "jpeg", "p": 0.5}, {"op": "crop", "p": 0.5}]


def test_robustness_table_is_deterministic_and_matches_clean_evaluation(trained_run, gan_images):
    from tfdnadet.evaluation.evaluate import evaluate_dataset
    from tfdnadet.evaluation.robustness import robustness_table
    from tfdnadet.models.model_dir import load_detector

    detector = load_detector(trained_run.model_dir)
    sets = {"closed-set": gan_images["test"]}
    table = robustness_table(detector, sets, ["jpeg", "combo"], seed=5)
    row = table["rows"]["closed-set"]
    assert table["columns"] == ["clean", "jpeg", "combo"] and row["count"] == 3 * 24 + 12
    assert row["scores"]["clean"]["accuracy"] == evaluate_dataset(detector, gan_images["test"])["accuracy"]
    assert all(0.0 <= cell["accuracy"] <= 1.0 for cell in row["scores"].values())
    assert robustness_table(detector, sets, ["jpeg", "combo"], seed=5)["rows"] == table["rows"]


def test_evaluate_attack_prints_table5_and_writes_json(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(
        ["evaluate", trained_run.model_dir, "--data", gan_images["test"], "--attack", "all", "--out", tmp_path / "r"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    row = "test"  # named after the data set (test.csv), not Table 5's closed set
    for title in ("Clean", "Crop", "Blur", "JPEG", "Noise", "Relight", "Combination", row):
        assert title in out
    saved = json.load(open(tmp_path / "r" / "robustness.json"))
    assert saved["columns"] == ["clean", *perturb.ATTACKS] and list(saved["rows"]) == [row]
    clean = saved["rows"][row]["scores"]["clean"]["accuracy"]
    assert f"{100 * clean:.2f}" in out
    code, out, err = run_cli(["evaluate", trained_run.model_dir, "--data", gan_images["test"], "--attack", "fog"], monkeypatch, capsys)
    assert code == 1 and "Unknown attack 'fog'" in err and "Traceback" not in err
