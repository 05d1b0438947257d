"""The compared methods of the paper's Table 2 [5.1] as backbones of a Detector.

- AttNet (Yu et al. 2019): a PatchGAN-like convolutional classifier, trained with cross-entropy.
- LeveFreq (Frank et al. 2020), `dct_cnn`: a small CNN on the log-magnitude DCT spectrum of the image.
- PRNU (Marra et al. 2019): a noise residual (image minus a denoised copy) per image; a class's fingerprint
  is the average residual of its training images, matched by correlation (`PRNUResidual.fit_head`).

Each ends in a layer named `pool`, so the Detector, evaluation and export treat them like the encoder.
"""

import keras
import numpy as np
import tensorflow as tf

from tfdnadet.models.backbones import CLOSED_FORM, register_backbone
from tfdnadet.models.encoder import POOL_LAYER, batch_norm, channels
from tfdnadet.models.heads import MulticlassHead

# (filters, stride) of AttNet's k4 convolutions: the 70x70 PatchGAN discriminator's C64-C128-C256-C512.
ATTNET_BLOCKS = ((64, 2), (128, 2), (256, 2), (512, 1))
# Filters of the DCT CNN's conv3 blocks, each but the last followed by 2x2 average pooling.
DCT_CNN_BLOCKS = (64, 128, 256, 512)
CORRELATION_SCALE = 100.0  # correlations are small; scaled so the softmax is not flat
_DENOISE_KERNEL = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0  # 3x3 binomial (Gaussian) smoothing


@register_backbone("attnet")
@keras.saving.register_keras_serializable(package="tfdnadet")
class AttNet(keras.Model):
    """PatchGAN-like classifier: k4 convs (BN after the first), LeakyReLU 0.2, global average pooling."""

    def __init__(self, width: float = 1.0, dtype=None, **kwargs):
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        features = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER, dtype=dtype)(patchgan_blocks(images, width, dtype))
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.width = width
        self.feature_dim = channels(ATTNET_BLOCKS[-1][0], width)

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable, "dtype": self.dtype_policy.name}


def patchgan_blocks(x, width: float, dtype=None):
    """The 70x70 PatchGAN's k4 convolutions on tensor x (BN after the first, LeakyReLU 0.2); layers block{i}_*."""
    for index, (filters, stride) in enumerate(ATTNET_BLOCKS, start=1):
        x = keras.layers.Conv2D(
            channels(filters, width), 4, strides=stride, padding="same", name=f"block{index}_conv", dtype=dtype
        )(x)
        if index > 1:
            x = batch_norm(f"block{index}_bn", dtype)(x)
        x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"block{index}", dtype=dtype)(x)
    return x


@keras.saving.register_keras_serializable(package="tfdnadet")
class DCTSpectrum(keras.layers.Layer):
    """log(|DCT-II| + 1) of every channel over height and width (orthonormal), in float32."""

    def call(self, images):
        x = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # [B, C, H, W]
        x = tf.signal.dct(x, type=2, norm="ortho")  # over W
        x = tf.signal.dct(tf.linalg.matrix_transpose(x), type=2, norm="ortho")  # over H: [B, C, W, H]
        return tf.math.log(tf.abs(tf.transpose(x, [0, 3, 2, 1])) + 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape


@register_backbone("dct_cnn")
@keras.saving.register_keras_serializable(package="tfdnadet")
class DCTCNN(keras.Model):
    """LeveFreq: log |DCT|, learned normalisation, conv3-ReLU-avgpool blocks, global average pooling."""

    def __init__(self, width: float = 1.0, dtype=None, **kwargs):
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        spectrum = DCTSpectrum(name="dct", dtype="float32")(images)
        # Frank et al. standardise the log spectrum with training-set statistics; BN learns the same.
        x = batch_norm("spectrum_norm", dtype)(spectrum)
        for index, filters in enumerate(DCT_CNN_BLOCKS, start=1):
            x = keras.layers.Conv2D(
                channels(filters, width), 3, padding="same", activation="relu", name=f"block{index}", dtype=dtype
            )(x)
            if index < len(DCT_CNN_BLOCKS):
                x = keras.layers.AveragePooling2D(2, name=f"block{index}_pool", dtype=dtype)(x)
        features = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER, dtype=dtype)(x)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.width = width
        self.feature_dim = channels(DCT_CNN_BLOCKS[-1], width)

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable, "dtype": self.dtype_policy.name}


@keras.saving.register_keras_serializable(package="tfdnadet")
class NoiseResidual(keras.layers.Layer):
    """The image minus its 3x3 binomial smoothing (per channel, reflected borders): the noise PRNU keeps."""

    def call(self, images):
        images = tf.cast(images, tf.float32)
        kernel = tf.constant(np.repeat(_DENOISE_KERNEL[:, :, None, None], 3, axis=2), tf.float32)
        padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        return images - tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")

    def compute_output_shape(self, input_shape):
        return input_shape


@register_backbone("prnu", fit=CLOSED_FORM)
@keras.saving.register_keras_serializable(package="tfdnadet")
class PRNUResidual(keras.Model):
    """images [B, S, S, 3] -> the L2-normalised noise residual, flattened to [B, S*S*3] (layer `pool`)."""

    def __init__(self, image_size: int, **kwargs):
        # === Functional Model ===
        images = keras.Input(shape=(image_size, image_size, 3), name="images")
        residual = NoiseResidual(name="residual")(images)
        flat = keras.layers.Flatten(name="flatten")(residual)
        features = keras.layers.UnitNormalization(axis=-1, name=POOL_LAYER)(flat)
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Config ===
        self.image_size = image_size
        self.feature_dim = image_size * image_size * 3

    def get_config(self):
        return {"image_size": self.image_size, "name": self.name, "trainable": self.trainable}

    def fit_head(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> MulticlassHead:
        """Each class's fingerprint is its mean normalised residual; the head's logits are scaled correlations."""
        fingerprints = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
        fingerprints /= np.maximum(np.linalg.norm(fingerprints, axis=1, keepdims=True), 1e-12)
        head = MulticlassHead(self.feature_dim, num_classes, name="multiclass")
        head.get_layer("logits").set_weights([CORRELATION_SCALE * fingerprints.T, np.zeros(num_classes, np.float32)])
        return head
