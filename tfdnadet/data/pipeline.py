"""tf.data pipelines: parallel decode, class-balanced patch batches, full-image batches."""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfdnadet.data.images import ImageError, decode_image
from tfdnadet.data.preprocess import resize_to_base, to_model_input
from tfdnadet.data.sources import ImageList
from tfdnadet.errors import TfdnadetError


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
        return f"skipped {len(self.failures)} unusable image file(s), e.g. {path}: {reason}"


def decode_images(images: ImageList, base_size: int, max_pixels: int = 100_000_000, min_size: int = 1) -> tuple:
    """(a dataset of (index, uint8 [base, base, 3] image, usable) decoding the files in parallel, in order;
    {index: (path, reason)} of the unusable files, filled as the dataset is read)."""
    failures = {}

    def decode(index):
        path = images.paths[int(index)]
        try:
            return decode_image(path, max_pixels, min_size), True
        except ImageError as exc:
            failures[int(index)] = (path, str(exc))
            return np.zeros((1, 1, 3), np.uint8), False

    def decode_op(index):
        image, ok = tf.numpy_function(decode, [index], (tf.uint8, tf.bool), stateful=False)
        image.set_shape([None, None, 3])
        return index, resize_to_base(image, base_size), ok

    dataset = tf.data.Dataset.range(len(images)).map(decode_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset, failures


def load_images(
    images: ImageList, base_size: int, max_pixels: int = 100_000_000, min_size: int = 1
) -> LoadedImages:
    """Decode every file in parallel with tf.data, resize to base size, and set aside unusable files."""
    dataset, failures = decode_images(images, base_size, max_pixels, min_size)
    arrays, oks = [], []
    for _, batch, ok in dataset.batch(256).as_numpy_iterator():
        arrays.append(batch)
        oks.append(ok)
    ok = np.concatenate(oks) if oks else np.zeros([0], bool)
    stacked = np.concatenate(arrays) if arrays else np.zeros([0, base_size, base_size, 3], np.uint8)
    return LoadedImages(
        stacked[ok],
        images.labels[ok] if len(images) else images.labels,
        [p for p, good in zip(images.paths, ok) if good],
        [failures[i] for i in sorted(failures)],
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


def shuffled_forever(elements: np.ndarray, seed: int) -> tf.data.Dataset:
    """`elements` in a new order every pass, endlessly; pass e's order is keyed by (seed, e) alone.

    Unlike `Dataset.shuffle`, whose op seeds mix with TF's global seed, a second run in the same process repeats the first.
    """
    elements = tf.constant(elements)

    def one_pass(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(elements)[0]), tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order)

    return tf.data.Dataset.counter().flat_map(one_pass).map(lambda index: tf.gather(elements, index))


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
) -> tf.data.Dataset:
    """Endless class-balanced batches: k images per class -> patches [k*C*P, p, p, 3] and their labels.

    Every random draw is keyed by (seed, batch index), so a run repeats exactly however tf.data schedules its maps.
    """
    k = data_config.images_per_class
    per_class = []
    for label in range(num_classes):
        members = images[labels == label]
        per_class.append(shuffled_forever(members, seed + label).batch(k))

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
        .enumerate()
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
