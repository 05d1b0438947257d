"""The stage-1 transformation bank [4.1]: each (operation, parameter) pair is one class, applied with TF ops.

A bank is a table {operation: [parameter of each class]}; a parameter with two parts is a list,
e.g. resample [0.5, "bicubic"]. Every operation maps one uint8 [H, W, 3] image to another of the same size,
so the bank runs inside tf.data.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np
import tensorflow as tf

from tfdnadet.data import perturb
from tfdnadet.data.pipeline import batch_seeds, shuffled_forever, to_patch_batch
from tfdnadet.errors import TfdnadetError

JPEG_QUALITIES = tuple(range(30, 100, 3))  # 30, 33, ..., 99: 24 values
KERNEL_SIZES = tuple(range(3, 30, 2))  # 3, 5, ..., 29: 14 values
RESAMPLE_FACTORS = tuple(round(0.15 + 0.05 * i, 2) for i in range(16))  # 0.15, 0.20, ..., 0.90
RESAMPLE_METHODS = ("nearest", "bilinear", "bicubic", "area", "lanczos3")
NOISE_VARIANCES = tuple(range(10, 50, 3))  # 10, 13, ..., 49 on the 0-255 scale: 14 values
# Upsampling layers of generators [App. B]: resize + 3x3 conv, 4x4 stride-2 transposed conv, sub-pixel conv.
UPSAMPLE_LAYERS = ("nearest", "bilinear", "transposed", "subpixel")
UPSAMPLE_WEIGHT_SPREAD = 0.2  # std of each output's gain around 1 from the random weights

# The paper's 170 classes [4.1]: 24 + 24 compression, 14 + 14 blurring, 80 resampling, 14 noising.
PAPER_BANK = {
    "jpeg": list(JPEG_QUALITIES),
    # The second quality mirrors the first across the range (30 -> 99, 33 -> 96, ...), so the two never coincide.
    "double_jpeg": [[q, JPEG_QUALITIES[0] + JPEG_QUALITIES[-1] - q] for q in JPEG_QUALITIES],
    "gaussian_blur": list(KERNEL_SIZES),
    "median_blur": list(KERNEL_SIZES),
    "resample": [[factor, method] for method in RESAMPLE_METHODS for factor in RESAMPLE_FACTORS],
    "noise": list(NOISE_VARIANCES),
}


def jpeg(image: tf.Tensor, quality: int) -> tf.Tensor:
    return tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality), channels=3)


def double_jpeg(image: tf.Tensor, quality: int, second_quality: int) -> tf.Tensor:
    return jpeg(jpeg(image, quality), second_quality)


def gaussian_blur(image: tf.Tensor, kernel: int) -> tf.Tensor:
    """Gaussian blur with a k x k kernel, sigma from k as OpenCV's default (the robustness attack's op)."""
    return perturb.gaussian_blur(image[None], tf.constant([kernel]), kernel)[0]


def median_blur(image: tf.Tensor, kernel: int) -> tf.Tensor:
    """The median of each k x k window, per channel, with mirrored borders.

    OpenCV's histogram median (exact for uint8) runs 15-100x faster than the TF ops tried (counting window values
    below each of 255 thresholds, top_k over the windows); the five median classes were two thirds of stage 1's
    pipeline time with them.
    """
    margin = kernel // 2
    blurred = tf.numpy_function(lambda padded: cv2.medianBlur(padded, kernel), [_pad(image, margin)], tf.uint8, stateful=False)
    return tf.ensure_shape(blurred[margin:-margin, margin:-margin], image.shape)


def resample(image: tf.Tensor, factor: float, method: str) -> tf.Tensor:
    """Downscale by `factor` and back up to the original size, both with `method` (no antialiasing)."""
    size = tf.shape(image)[:2]
    small = tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32))
    down = tf.image.resize(tf.cast(image, tf.float32), small, method=method)
    return _to_uint8(tf.image.resize(down, size, method=method))


def random_upsample(image: tf.Tensor, layer: str, seed) -> tf.Tensor:
    """Halve the image (area), then double it with a generator's upsampling layer of random weights (near an
    interpolation, new for every image): the class is the kind of layer, not its weights, as an architecture is
    not its seed. Beyond the paper's bank, which resamples with interpolations only [4.1]."""
    size = tf.shape(image)[:2]
    half = (size + 1) // 2
    small = tf.image.resize(tf.cast(image, tf.float32)[None], half, method="area")
    if layer in ("nearest", "bilinear"):
        up = tf.image.resize(small, 2 * half, method=layer)
        out = tf.nn.conv2d(_pad(up[0], 1)[None], _near_identity(seed, [3, 3, 3, 3]), 1, "VALID")
    elif layer == "transposed":
        # Bilinear weights [1, 3, 3, 1] / 4 on each axis interpolate exactly; a mirrored 1-pixel border, cut off
        # again, keeps the edges as bright as the rest.
        taps = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
        kernel = _near_identity(seed, [4, 4, 3, 3], np.outer(taps, taps), stride=2)
        padded = _pad(small[0], 1)[None]
        out = tf.nn.conv2d_transpose(padded, kernel, tf.stack([1, 2 * half[0] + 6, 2 * half[1] + 6, 3]), 2, "VALID")[:, 3:-3, 3:-3]
    else:  # subpixel: one 3x3 conv to 4 x 3 channels, each group one of the 2 x 2 output pixels
        out = tf.nn.depth_to_space(tf.nn.conv2d(_pad(small[0], 1)[None], _near_identity(seed, [3, 3, 3, 12]), 1, "VALID"), 2)
    return _to_uint8(out[0, : size[0], : size[1]])


def _near_identity(seed, shape: list, spatial: Optional[np.ndarray] = None, stride: int = 1) -> tf.Tensor:
    """Conv weights [kh, kw, 3, out] that copy each channel (through `spatial`, else the centre tap) to every
    group of 3 outputs, plus Gaussian noise that moves each output's gain by about UPSAMPLE_WEIGHT_SPREAD (a
    transposed conv of stride s reaches each output pixel with 1/s^2 of its taps)."""
    kh, kw, _, out = shape
    fan_in = kh * kw * 3 // stride**2
    if spatial is None:
        spatial = np.zeros((kh, kw), np.float32)
        spatial[kh // 2, kw // 2] = 1.0
    base = spatial[:, :, None, None] * np.tile(np.eye(3, dtype=np.float32), (1, out // 3))[None, None]
    noise = tf.random.stateless_normal(shape, seed, stddev=UPSAMPLE_WEIGHT_SPREAD / float(np.sqrt(fan_in)))
    return tf.constant(base) + noise


def gaussian_noise(image: tf.Tensor, variance: float, seed) -> tf.Tensor:
    noise = tf.random.stateless_normal(tf.shape(image), seed, stddev=float(np.sqrt(variance)))
    return _to_uint8(tf.cast(image, tf.float32) + noise)


def _pad(image: tf.Tensor, width: int) -> tf.Tensor:
    # Mirrored borders, so the edges are not darkened as zero padding would.
    return tf.pad(image, [[width, width], [width, width], [0, 0]], mode="SYMMETRIC")


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


@dataclass(frozen=True)
class Operation:
    function: Callable
    params: tuple  # names of the parameters, in the order `function` takes them
    name: str  # class name pattern
    random: bool = False  # `function` also takes a stateless seed pair


OPERATIONS = {
    "jpeg": Operation(jpeg, ("quality",), "jpeg_q{quality}"),
    "double_jpeg": Operation(double_jpeg, ("quality", "second_quality"), "double_jpeg_q{quality}_q{second_quality}"),
    "gaussian_blur": Operation(gaussian_blur, ("kernel",), "gaussian_blur_k{kernel}"),
    "median_blur": Operation(median_blur, ("kernel",), "median_blur_k{kernel}"),
    "resample": Operation(resample, ("factor", "method"), "resample_{method}_x{factor:g}"),
    "noise": Operation(gaussian_noise, ("variance",), "noise_var{variance:g}", random=True),
    "upsample": Operation(random_upsample, ("layer",), "upsample_{layer}", random=True),
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_quality(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100


PARAMETER_CHECKS = {
    "quality": (_is_quality, "an integer in 1..100"),
    "second_quality": (_is_quality, "an integer in 1..100"),
    "kernel": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 3 and v % 2 == 1, "an odd integer >= 3"),
    "factor": (lambda v: _is_number(v) and 0 < v < 1, "a number between 0 and 1"),
    "method": (lambda v: v in RESAMPLE_METHODS, f"one of {', '.join(RESAMPLE_METHODS)}"),
    "variance": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "layer": (lambda v: v in UPSAMPLE_LAYERS, f"one of {', '.join(UPSAMPLE_LAYERS)}"),
}


@dataclass(frozen=True)
class Transform:
    """One class of the bank: an operation with its parameters."""

    op: str
    params: tuple

    @property
    def name(self) -> str:
        return OPERATIONS[self.op].name.format(**dict(zip(OPERATIONS[self.op].params, self.params)))

    def __call__(self, image: tf.Tensor, seed) -> tf.Tensor:
        operation = OPERATIONS[self.op]
        return operation.function(image, *self.params, seed) if operation.random else operation.function(image, *self.params)


class TransformBank:
    """The classes of stage 1, read from a table; `apply(image, label, seed)` transforms one image by its class."""

    def __init__(self, table: Optional[dict] = None, image_size: Optional[int] = None):
        self.transforms = parse_table(PAPER_BANK if table is None else table)
        if image_size is not None:
            _check_image_size(self.transforms, image_size)

    @property
    def class_names(self) -> list:
        return [t.name for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def apply(self, image: tf.Tensor, label: tf.Tensor, seed) -> tf.Tensor:
        """uint8 [H, W, 3] -> the same image transformed by class `label` (runs only that class's branch); `seed` a stateless pair."""
        branches = [lambda t=t: t(image, seed) for t in self.transforms]
        return tf.ensure_shape(tf.switch_case(label, branches), image.shape)


def parse_table(table) -> list:
    """{op: [parameter per class]} -> [Transform]; bad operations or parameters are a TfdnadetError."""
    if not isinstance(table, dict) or not table:
        raise TfdnadetError("stage1.transforms must be a mapping {operation: [parameters of each class]}.")
    transforms = []
    for op, values in table.items():
        if op not in OPERATIONS:
            raise TfdnadetError(f"Unknown stage-1 transformation. Received: {op!r}. Known: {', '.join(OPERATIONS)}.")
        if not isinstance(values, list) or not values:
            raise TfdnadetError(f"stage1.transforms.{op} must be a non-empty list, one parameter per class.")
        transforms += [Transform(op, _parse_params(op, value)) for value in values]
    names = [t.name for t in transforms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TfdnadetError(f"stage1.transforms lists the same class more than once: {', '.join(repeated)}.")
    return transforms


def _parse_params(op: str, value) -> tuple:
    names = OPERATIONS[op].params
    params = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if len(params) != len(names):
        raise TfdnadetError(f"stage1.transforms.{op}: each class needs [{', '.join(names)}]. Received: {value!r}")
    for name, param in zip(names, params):
        check, expected = PARAMETER_CHECKS[name]
        if not check(param):
            raise TfdnadetError(f"stage1.transforms.{op}: {name} must be {expected}. Received: {param!r}")
    return params


def _check_image_size(transforms: list, size: int) -> None:
    largest = max((t.params[0] for t in transforms if t.op in ("gaussian_blur", "median_blur")), default=1)
    if largest // 2 > size:
        raise TfdnadetError(f"stage1.transforms: blur kernel {largest} is too large for {size} px images (data.base_size).")


def transform_images(images: np.ndarray, labels: np.ndarray, bank: TransformBank, batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """Apply class labels[i] to images[i] (uint8 [N, S, S, 3]) in one tf.data pass; the same seed, the same pixels."""
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
        .enumerate()
        .map(lambda i, pair: bank.apply(*pair, batch_seeds(seed, i, 1)[0]), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
    )
    return np.concatenate(list(dataset.as_numpy_iterator()))


def make_transform_dataset(
    crops: np.ndarray, bank: TransformBank, data_config, images_per_class: int, seed: int = 0, start: int = 0
) -> tf.data.Dataset:
    """Endless class-balanced batches [4.1]: every class transforms k random crops -> patches and labels, from batch
    `start` on.

    Random crops meet the classes in a fixed order, so each batch holds each class exactly k times. Draws are keyed
    by (seed, image or batch index), as in `make_patch_dataset`.
    """
    labels = np.repeat(np.arange(len(bank), dtype=np.int32), images_per_class)
    images = shuffled_forever(crops, seed, start * len(labels))
    classes = tf.data.Dataset.from_tensor_slices(labels).repeat()  # a batch is one whole cycle: no skip needed
    return (
        tf.data.Dataset.zip((images, classes))
        .enumerate(start * len(labels))
        .map(lambda i, pair: (bank.apply(*pair, batch_seeds(seed, i, 2)[0]), pair[1]), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(len(labels), drop_remainder=True)
        .enumerate(start)
        .map(lambda j, batch: to_patch_batch(*batch, data_config, batch_seeds(seed, j, 2)[1]), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
