"""The paper's resize chain [5.1, App. E], shared by training, prediction and the SavedModel export."""

import tensorflow as tf


def min_image_side(patch_size: int, base_size: int) -> int:
    """The smallest usable image side: a patch's size, or the base size when patches are larger (whole-image
    models train on patches of the upsampled full image)."""
    return min(patch_size, base_size)


def resize_to_base(images: tf.Tensor, base_size: int) -> tf.Tensor:
    """uint8 image(s) of any size -> uint8 base_size x base_size (the data set's lowest resolution)."""
    resized = tf.image.resize(tf.cast(images, tf.float32), [base_size, base_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def to_model_input(base_images: tf.Tensor, input_size: int) -> tf.Tensor:
    """uint8 base-size image(s) -> float32 input_size x input_size in [-1, 1] (upsampling magnifies traces)."""
    resized = tf.image.resize(tf.cast(base_images, tf.float32), [input_size, input_size], method="bilinear")
    return resized / 127.5 - 1.0
