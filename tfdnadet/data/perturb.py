"""Image perturbations [5.5, Table 5]: crop, blur, JPEG, noise, relight and their random combination,
and views of other generators of the same architecture (the square's symmetries, colour channels reordered or
inverted) as training augmentations.

The same TensorFlow ops serve as training augmentation inside tf.data (`data.augment`, see
`make_augment`) and as deterministic, seeded test attacks (`apply_attack`). Every op maps a uint8 batch
[B, H, W, 3] to a uint8 batch of the same shape, draws its parameters per image from `seed` (a pair
of ints, stateless random ops), and can be called on its own.
"""

import itertools
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfdnadet.errors import TfdnadetError

# Parameter ranges of Khoo et al. 2022 Section 3.3, which follow Yu et al. 2019 as DNA-Det 5.5 does.
# Relighting: Yu et al. relight faces with SfSNet; a global brightness/contrast/gamma change stands in.
DEFAULT_PARAMETERS = {
    "crop": {"fraction": (0.05, 0.20)},  # share cut off each axis, then resized back
    "blur": {"kernel_sizes": (3, 5, 7, 9)},  # Gaussian kernel size
    "jpeg": {"quality": (10, 75)},
    "noise": {"variance": (5.0, 20.0)},  # i.i.d. Gaussian, on the 0-255 scale
    "relight": {"brightness": (-0.1, 0.1), "contrast": (0.8, 1.2), "gamma": (0.8, 1.25)},
    "symmetry": {},
    "transpose": {},
    "channels": {},
    "combo": {},
}
_LIMITS = {
    "fraction": (0.0, 0.9),
    "quality": (1, 100),
    "variance": (0.0, 65025.0),
    "brightness": (-1.0, 1.0),
    "contrast": (0.01, 100.0),
    "gamma": (0.01, 100.0),
}
# Khoo's combination order (blur, crop, JPEG, noise, each with probability 0.5), relighting first.
COMBINATION = ("relight", "blur", "crop", "jpeg", "noise")
COMBINATION_PROBABILITY = 0.5
ATTACKS = ("crop", "blur", "jpeg", "noise", "relight", "combo")  # the columns of Table 5
ATTACK_TITLES = {"crop": "Crop", "blur": "Blur", "jpeg": "JPEG", "noise": "Noise", "relight": "Relight", "combo": "Combination"}


TABLE5 = "table5"  # data.augment's shorthand for `table5_augment()`


def table5_augment() -> list:
    """Training under the Table 5 attacks as `data.augment` entries: Khoo's combination, each op with p 0.5."""
    return [{"op": op, "p": COMBINATION_PROBABILITY} for op in COMBINATION]


def _uniform(seed, batch, bounds) -> tf.Tensor:
    low, high = bounds
    return tf.random.stateless_uniform([batch], seed, float(low), float(high))


def crop(images, seed, fraction=DEFAULT_PARAMETERS["crop"]["fraction"]) -> tf.Tensor:
    """Cut a random share off both axes at a random offset, then resize back to the original size."""
    shape = tf.shape(images)
    cut_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    cut = _uniform(cut_seed, shape[0], fraction)[:, None]
    start = tf.random.stateless_uniform([shape[0], 2], offset_seed) * cut
    boxes = tf.concat([start, start + 1.0 - cut], axis=1)  # [y1, x1, y2, x2], normalised
    resized = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(shape[0]), shape[1:3])
    return _to_uint8(resized)


def gaussian_kernels(sizes: tf.Tensor, support: int) -> tf.Tensor:
    """1-D Gaussian kernels [B, support] for odd `sizes` [B], zero outside each size, OpenCV's sigma rule."""
    sizes = tf.cast(sizes, tf.float32)[:, None]
    x = tf.range(-(support // 2), support // 2 + 1, dtype=tf.float32)[None, :]
    sigma = 0.3 * ((sizes - 1.0) * 0.5 - 1.0) + 0.8
    weights = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma))) * tf.cast(tf.abs(x) <= (sizes - 1.0) / 2.0, tf.float32)
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def gaussian_blur(images, sizes: tf.Tensor, support: int) -> tf.Tensor:
    """Blur each image of a uint8 batch with its own odd kernel size (sizes [B], all <= support)."""
    kernels = gaussian_kernels(sizes, support)  # [B, K]
    shape = tf.shape(images)
    batch, channels, radius = shape[0], shape[3], support // 2
    # Images become the channels of one image, so a depthwise conv gives each its own kernel.
    stacked = tf.reshape(tf.transpose(tf.cast(images, tf.float32), [1, 2, 0, 3]), [1, shape[1], shape[2], -1])
    stacked = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    per_channel = tf.repeat(kernels, channels, axis=0)  # [B * C, K]
    vertical = tf.transpose(per_channel)[:, None, :, None]
    horizontal = tf.transpose(per_channel)[None, :, :, None]
    blurred = tf.nn.depthwise_conv2d(stacked, vertical, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")
    return _to_uint8(tf.transpose(tf.reshape(blurred, [shape[1], shape[2], batch, channels]), [2, 0, 1, 3]))


def blur(images, seed, kernel_sizes=DEFAULT_PARAMETERS["blur"]["kernel_sizes"]) -> tf.Tensor:
    """Gaussian blur with a kernel size drawn per image from `kernel_sizes`."""
    pick = tf.random.stateless_uniform([tf.shape(images)[0]], seed, 0, len(kernel_sizes), dtype=tf.int32)
    return gaussian_blur(images, tf.gather(tf.constant(kernel_sizes), pick), max(kernel_sizes))


def jpeg(images, seed, quality=DEFAULT_PARAMETERS["jpeg"]["quality"]) -> tf.Tensor:
    """JPEG compression at a quality drawn per image from [low, high]."""
    low, high = quality
    qualities = tf.random.stateless_uniform([tf.shape(images)[0]], seed, int(low), int(high) + 1, dtype=tf.int32)
    compress = lambda pair: tf.image.adjust_jpeg_quality(pair[0], pair[1])  # noqa: E731
    return tf.map_fn(compress, (tf.cast(images, tf.uint8), qualities), fn_output_signature=tf.uint8)


def noise(images, seed, variance=DEFAULT_PARAMETERS["noise"]["variance"]) -> tf.Tensor:
    """Additive i.i.d. Gaussian noise with a variance drawn per image (0-255 scale)."""
    variance_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    std = tf.sqrt(_uniform(variance_seed, tf.shape(images)[0], variance))[:, None, None, None]
    values = tf.cast(images, tf.float32)
    return _to_uint8(values + std * tf.random.stateless_normal(tf.shape(values), noise_seed))


def relight(
    images,
    seed,
    brightness=DEFAULT_PARAMETERS["relight"]["brightness"],
    contrast=DEFAULT_PARAMETERS["relight"]["contrast"],
    gamma=DEFAULT_PARAMETERS["relight"]["gamma"],
) -> tf.Tensor:
    """A global lighting change per image: gamma, then contrast about the image mean, then brightness."""
    batch = tf.shape(images)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    g, c, b = (_uniform(s, batch, bounds)[:, None, None, None] for s, bounds in zip(seeds, (gamma, contrast, brightness)))
    values = tf.pow(tf.cast(images, tf.float32) / 255.0, g)
    mean = tf.reduce_mean(values, axis=[1, 2, 3], keepdims=True)
    return _to_uint8(((values - mean) * c + mean + b) * 255.0)


def symmetry(images, seed) -> tf.Tensor:
    """One of the square's eight symmetries (flips, quarter turns) per image of a square batch.

    A generator whose kernels are mirrored or turned is the same architecture; its images are these images exactly
    where every layer pads evenly (nearest or bilinear upsampling, k3 convs, k4 s2 transposed convs), not quite
    where one pads unevenly (see `transpose`).
    """
    turn, left_right, up_down = tf.unstack(tf.random.stateless_uniform([3, tf.shape(images)[0]], seed) < 0.5)
    images = tf.where(turn[:, None, None, None], tf.transpose(images, [0, 2, 1, 3]), images)
    images = tf.where(left_right[:, None, None, None], tf.reverse(images, [2]), images)
    return tf.where(up_down[:, None, None, None], tf.reverse(images, [1]), images)


def transpose(images, seed) -> tf.Tensor:
    """Rows and columns swapped (a mirror about the main diagonal) in each image of a square batch, with `p`.

    The generator with every kernel transposed is the same architecture, and it makes exactly the transposed image:
    each layer's padding and stride grid are the same on both axes. Flips are not exact so (a stride-2 layer with
    uneven padding, e.g. a k5 transposed conv, would put its pattern on the other pixel phase).
    """
    return tf.transpose(images, [0, 2, 1, 3])


def channels(images, seed) -> tf.Tensor:
    """Colour channels in one of their six orders, each inverted (255 - value) with probability 1/2, per image.

    A generator ends in tanh, an odd function, after a layer whose output channels can be reordered and negated
    (weights and bias): that generator is the same architecture and makes exactly these images (up to rounding ties).
    """
    order_seed, invert_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    batch = tf.shape(images)[0]
    orders = tf.constant(list(itertools.permutations(range(3))), tf.int32)
    order = tf.gather(orders, tf.random.stateless_uniform([batch], order_seed, 0, len(orders), tf.int32))
    images = tf.gather(images, order, axis=3, batch_dims=1)
    inverted = tf.random.stateless_uniform([batch, 1, 1, 3], invert_seed) < 0.5
    return tf.where(inverted, 255 - images, images)


def combination(images, seed) -> tf.Tensor:
    """Table 5's combination attack as one op: Khoo's order, each op with probability 0.5."""
    return perturb(images, attack_steps("combo"), seed)


OPS = {
    "crop": crop, "blur": blur, "jpeg": jpeg, "noise": noise, "relight": relight,
    "symmetry": symmetry, "transpose": transpose, "channels": channels, "combo": combination,
}


def _to_uint8(values: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, 255.0), tf.uint8)


@dataclass(frozen=True)
class Step:
    """One perturbation applied to each image with probability `p`."""

    op: str
    p: float = 1.0
    params: tuple = ()  # (name, value) pairs that override DEFAULT_PARAMETERS[op]


def parse_augment(entries, where: str = "data.augment") -> list:
    """Validate `[{op: NAME, p: PROBABILITY, <parameter>: [low, high]}, ...]` (or TABLE5) -> [Step]."""
    if entries == TABLE5:
        entries = table5_augment()
    if not isinstance(entries, (list, tuple)):
        raise TfdnadetError(f"{where} must be {TABLE5} or a list of {{op: NAME, p: PROBABILITY}} entries. Received: {entries!r}")
    return [_parse_step(entry, f"{where}[{i}]") for i, entry in enumerate(entries)]


def _parse_step(entry, where: str) -> Step:
    if not isinstance(entry, dict) or "op" not in entry:
        raise TfdnadetError(f"{where} must be a mapping with an 'op' key, e.g. {{op: jpeg, p: 0.5}}. Received: {entry!r}")
    values = dict(entry)
    op, p = values.pop("op"), values.pop("p", 1.0)
    if op not in OPS:
        raise TfdnadetError(f"{where}: unknown op {op!r}. Known ops: {', '.join(OPS)}.")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise TfdnadetError(f"{where}: p must be a probability in [0, 1]. Received: p={p!r}")
    known = DEFAULT_PARAMETERS[op]
    for name, value in values.items():
        if name not in known:
            raise TfdnadetError(f"{where}: op {op!r} has no parameter {name!r}. Known: op, p, {', '.join(known)}.")
        values[name] = _check_parameter(name, value, where)
    return Step(op, float(p), tuple(sorted(values.items())))


def _check_parameter(name: str, value, where: str) -> tuple:
    numbers = isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if name == "kernel_sizes":
        if not numbers or any(int(v) != v or v < 1 or v % 2 == 0 for v in value):
            raise TfdnadetError(f"{where}: kernel_sizes must be a list of odd positive integers. Received: {value!r}")
        return tuple(int(v) for v in value)
    low_limit, high_limit = _LIMITS[name]
    if not numbers or len(value) != 2 or not low_limit <= value[0] <= value[1] <= high_limit:
        raise TfdnadetError(
            f"{where}: {name} must be [low, high] with {low_limit} <= low <= high <= {high_limit}. Received: {value!r}"
        )
    return tuple(value)


def perturb(images, steps: list, seed) -> tf.Tensor:
    """Apply `steps` in order to a uint8 batch; each image takes each step with the step's probability."""
    images = tf.convert_to_tensor(images, tf.uint8)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2 * max(1, len(steps)))
    for i, step in enumerate(steps):
        changed = OPS[step.op](images, seeds[2 * i], **dict(step.params))
        if step.p < 1.0:
            chosen = tf.random.stateless_uniform([tf.shape(images)[0]], seeds[2 * i + 1]) < step.p
            changed = tf.where(chosen[:, None, None, None], changed, images)
        images = changed
    return images


def make_augment(entries):
    """The training augmentation of `data.augment` for `make_patch_dataset`: `augment(batch, seed)`, seed a stateless pair."""
    steps = parse_augment(entries)

    def augment(batch, seed):
        return perturb(batch, steps, seed)

    return augment


def attack_steps(name: str) -> list:
    """The steps of a Table 5 attack: one op always applied, or `combo` (each op with probability 0.5)."""
    if name == "combo":
        return [Step(op, COMBINATION_PROBABILITY) for op in COMBINATION]
    if name not in ATTACKS:
        raise TfdnadetError(f"Unknown attack {name!r}. Known attacks: {', '.join(ATTACKS)}, all.")
    return [Step(name)]


def parse_attacks(text: str) -> list:
    """'all' or comma-separated attack names -> attack names, checked."""
    names = list(ATTACKS) if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        attack_steps(name)
    if not names:
        raise TfdnadetError(f"No attack given. Known attacks: {', '.join(ATTACKS)}, all.")
    return names


def apply_attack(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """A deterministic test attack on uint8 images [N, H, W, 3]: the same seed gives the same pixels."""
    return perturb(images, attack_steps(name), [seed, ATTACKS.index(name)]).numpy()
