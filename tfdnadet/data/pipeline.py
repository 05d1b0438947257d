"""tf.data pipelines: parallel decode, class-balanced patch batches, full-image batches."""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfdnadet.data.images import ImageError, decode_image, is_plain_png
from tfdnadet.data.preprocess import resize_to_base, to_model_input
from tfdnadet.data.sources import ImageList
from tfdnadet.errors import TfdnadetError
from tfdnadet.wording import counted


@dataclass
class LoadedImages:
    """Decoded images at base size, their labels, and the files that could not be used."""

    images: np.ndarray  # uint8 [N, base, base, 3]
    labels: np.ndarray  # int32 [N]
    paths: list
    failures: list  # (path, reason)

    def failure_summary(self) -> str:
        if not self.failures:
            return ""
        path, reason = self.failures[0]
        return f"skipped {counted(len(self.failures), 'unusable image file')}, e.g. {path}: {reason}"


NO_PIXELS = np.zeros((1, 1, 3), np.uint8)


@dataclass
class DecodingStream:
    """Files decoded in parallel, in order: `dataset` yields (index, uint8 [base, base, 3] image, usable). A plain
    PNG (`is_plain_png`) is decoded by libpng in the graph, any other file by PIL; a file libpng refuses is left out
    of `dataset` (a damaged PNG must not stop the stream), and `rest` decodes those with PIL afterwards."""

    dataset: tf.data.Dataset
    failures: dict  # {index: (path, reason)} of the unusable files, filled as the dataset is read
    paths: list
    base_size: int
    max_pixels: int
    min_size: int

    def rest(self, seen) -> tuple:
        """(indices, uint8 [k, base, base, 3]) of the usable files the dataset left out (neither in `seen` nor failed)."""
        indices, arrays = [], []
        for index in sorted(set(range(len(self.paths))) - set(seen) - set(self.failures)):
            try:
                image = decode_image(self.paths[index], self.max_pixels, self.min_size)
            except ImageError as exc:
                self.failures[index] = (self.paths[index], str(exc))
                continue
            indices.append(index)
            arrays.append(resize_to_base(image, self.base_size).numpy())
        shape = [0, self.base_size, self.base_size, 3]
        return np.asarray(indices, np.int64), np.stack(arrays) if arrays else np.zeros(shape, np.uint8)


def decode_images(images: ImageList, base_size: int, max_pixels: int = 100_000_000, min_size: int = 1) -> DecodingStream:
    """Decode `images`' files in parallel with tf.data at base size (see DecodingStream)."""
    failures = {}

    def read(index):
        """A plain PNG's bytes for the graph to decode, else PIL's pixels; usable or not."""
        path = images.paths[int(index)]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = None  # decode_image says why
        try:
            if data is not None and is_plain_png(data, max_pixels, min_size):
                return data, NO_PIXELS, True, True
            return b"", decode_image(path if data is None else data, max_pixels, min_size), False, True
        except ImageError as exc:
            failures[int(index)] = (path, str(exc))
            return b"", NO_PIXELS, False, False

    def decode_op(index):
        data, pixels, plain, ok = tf.numpy_function(read, [index], (tf.string, tf.uint8, tf.bool, tf.bool), stateful=False)
        pixels.set_shape([None, None, 3])
        image = tf.cond(plain, lambda: tf.io.decode_png(data, channels=3), lambda: pixels)
        return index, resize_to_base(image, base_size), ok

    dataset = tf.data.Dataset.range(len(images)).map(decode_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return DecodingStream(dataset.ignore_errors(), failures, list(images.paths), base_size, max_pixels, min_size)


def load_images(
    images: ImageList, base_size: int, max_pixels: int = 100_000_000, min_size: int = 1
) -> LoadedImages:
    """Decode every file in parallel with tf.data, resize to base size, and set aside unusable files."""
    stream = decode_images(images, base_size, max_pixels, min_size)
    indices, arrays, oks = [], [], []
    for index, batch, ok in stream.dataset.batch(256).as_numpy_iterator():
        indices.append(index)
        arrays.append(batch)
        oks.append(ok)
    rest, rest_arrays = stream.rest(np.concatenate(indices) if indices else [])
    index = np.concatenate([*indices, rest])
    order = np.argsort(index, kind="stable")
    ok = np.concatenate([*oks, np.ones(len(rest), bool)])[order]
    stacked = np.concatenate([*arrays, rest_arrays])[order]
    kept = index[order][ok]
    return LoadedImages(
        stacked[ok],
        images.labels[kept] if len(images) else images.labels,
        [images.paths[i] for i in kept],
        [stream.failures[i] for i in sorted(stream.failures)],
    )


def check_classes_present(loaded: LoadedImages, class_names: list, what: str) -> None:
    """Every class needs at least one usable image for class-balanced training."""
    counts = np.bincount(loaded.labels, minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if empty:
        raise TfdnadetError(f"No usable {what} images for class(es): {', '.join(empty)}.")


def batch_seeds(seed: int, index: tf.Tensor, count: int) -> tf.Tensor:
    """`count` stateless seed pairs [count, 2] for the batch numbered `index` of a run seeded `seed`."""
    return tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)]), count)


def shuffled_forever(elements: np.ndarray, seed: int, start: int = 0) -> tf.data.Dataset:
    """`elements` in a new order every pass, endlessly; pass e's order is keyed by (seed, e) alone. The stream begins
    at its element `start` (skipped as indices, before anything is gathered: cheap).

    Unlike `Dataset.shuffle`, whose op seeds mix with TF's global seed, a second run in the same process repeats the first.
    """
    elements = tf.constant(elements)

    def one_pass(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(elements)[0]), tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order)

    return tf.data.Dataset.counter().flat_map(one_pass).skip(start).map(lambda index: tf.gather(elements, index))


def random_patches(images: tf.Tensor, count: int, patch_size: int, seed) -> tf.Tensor:
    """`count` random patch_size crops of each image in [B, S, S, C] -> [B * count, p, p, C]; `seed` a stateless pair."""
    batch = tf.shape(images)[0]
    size = tf.shape(images)[1]
    span = tf.cast(size - 1, tf.float32)
    offsets = tf.random.stateless_uniform([batch * count, 2], seed, 0, size - patch_size + 1, dtype=tf.int32)
    starts = tf.cast(offsets, tf.float32)
    # Boxes on exact pixel positions and nearest sampling: crop_and_resize copies pixels, it never interpolates.
    boxes = tf.concat([starts, starts + float(patch_size - 1)], axis=1) / span  # [y1, x1, y2, x2]
    owners = tf.repeat(tf.range(batch), count)
    return tf.image.crop_and_resize(images, boxes, owners, [patch_size, patch_size], method="nearest")


def to_patch_batch(batch: tf.Tensor, labels: tf.Tensor, data_config, seed) -> tuple:
    """uint8 base-size images [B, s, s, 3] and labels -> model-input patches [B * P, p, p, 3] and their labels."""
    full = to_model_input(batch, data_config.input_size)
    patches = random_patches(full, data_config.patches_per_image, data_config.patch_size, seed)
    return patches, tf.repeat(labels, data_config.patches_per_image)


def make_patch_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    data_config,
    seed: int = 0,
    augment=None,
    start: int = 0,
) -> tf.data.Dataset:
    """Endless class-balanced batches: k images per class -> patches [k*C*P, p, p, 3] and their labels, from batch
    `start` on (a resumed run goes on with the batches it would have trained on).

    Every random draw is keyed by (seed, batch index), so a run repeats exactly however tf.data schedules its maps.
    """
    k = data_config.images_per_class
    per_class = []
    for label in range(num_classes):
        members = images[labels == label]
        per_class.append(shuffled_forever(members, seed + label, start * k).batch(k))

    def merge(*batches):
        merged = tf.concat(batches, axis=0)
        class_labels = tf.repeat(tf.range(num_classes, dtype=tf.int32), k)
        return merged, class_labels

    def to_patches(index, batch_and_labels):
        augment_seed, patch_seed = tf.unstack(batch_seeds(seed, index, 2))
        batch = batch_and_labels[0] if augment is None else augment(batch_and_labels[0], augment_seed)
        return to_patch_batch(batch, batch_and_labels[1], data_config, patch_seed)

    return (
        tf.data.Dataset.zip(tuple(per_class))
        .map(merge)
        .enumerate(start)
        .map(to_patches, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def make_image_dataset(
    images: np.ndarray, labels, input_size: int, batch_size: int, drop_remainder: bool = False
) -> tf.data.Dataset:
    """Full (resized) images for inference [5.1]: batches of float32 [B, S, S, 3] (with labels if given)."""
    parts = images if labels is None else (images, labels)
    dataset = tf.data.Dataset.from_tensor_slices(parts).batch(batch_size, drop_remainder=drop_remainder)
    if labels is None:
        dataset = dataset.map(lambda x: to_model_input(x, input_size), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda x, y: (to_model_input(x, input_size), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
