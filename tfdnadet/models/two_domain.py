"""A two-domain backbone: the DNA-Det encoder (spatial) fused with a learned branch over the image's spectrum.

Upsampling layers leave periodic traces that are peaks at fixed fractions of the sampling rate (Frank et al. 2020,
LeveFreq), which a spatial CNN learns slowly. The spectral branch reads log(1 + |FFT|) of each patch, resized to
a fixed grid of relative frequencies so a patch and a whole image see the same layout, through a few conv blocks
and a dense layer that keeps where in the spectrum a feature lies. Backbones:

- `dnadet_spectral`: both branches; their pooled features are concatenated and fused by a dense layer (`pool`).
  The spatial blocks are the encoder's own named layers (block1..block8), so Grad-CAM explains the spatial branch
  and the official PyTorch encoder loads into it (`import-torch --backbone dnadet_spectral`).
- `spectral`: the spectral branch alone (the ablation row next to `dnadet`).
"""

import keras
import tensorflow as tf

from tfdnadet.models.backbones import register_backbone
from tfdnadet.models.encoder import ENCODER_BLOCKS, LEAKY_SLOPE, POOL_LAYER, batch_norm, channels, encoder_block

SPECTRUM_SIZE = 32  # frequency grid every spectrum is resized to (the cpu config's patch size)
SPECTRAL_BLOCKS = (32, 64, 128)  # filters of the conv3-BN-LeakyReLU-avgpool2 blocks: 32 -> 16 -> 8 -> 4
SPECTRAL_FEATURES = 256  # features of the spectral branch (times the width multiplier)
SPATIAL_POOL = "spatial_pool"  # pooled features of the spatial branch
SPECTRAL_POOL = "spectral_pool"  # features of the spectral branch


@keras.saving.register_keras_serializable(package="tfdnadet")
class LogMagnitudeSpectrum(keras.layers.Layer):
    """log(1 + |FFT2|) of every channel over height and width, zero frequency centred, in float32.

    The transform is orthonormal (divided by sqrt(H * W)), so white noise has the same magnitude at any size.
    """

    def call(self, images):
        x = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # [B, C, H, W]: fft2d works on the last two axes
        spectrum = tf.signal.fft2d(tf.complex(x, tf.zeros_like(x)))
        size = tf.cast(tf.shape(x)[2] * tf.shape(x)[3], tf.float32)
        magnitude = tf.abs(tf.signal.fftshift(spectrum, axes=(-2, -1))) / tf.sqrt(size)
        return tf.transpose(tf.math.log1p(magnitude), [0, 2, 3, 1])

    def compute_output_shape(self, input_shape):
        return input_shape


def spectral_branch(images, width: float, dtype, output_name: str):
    """Spectrum of `images`, fixed frequency grid, conv blocks, flatten, dense + LeakyReLU named `output_name`."""
    spectrum = LogMagnitudeSpectrum(name="spectrum", dtype="float32")(images)
    x = keras.layers.Resizing(SPECTRUM_SIZE, SPECTRUM_SIZE, interpolation="area", name="spectrum_grid", dtype="float32")(spectrum)
    x = batch_norm("spectrum_norm", dtype)(x)  # standardises the log spectrum, as LeveFreq does with data statistics
    for index, filters in enumerate(SPECTRAL_BLOCKS, start=1):
        x = keras.layers.Conv2D(channels(filters, width), 3, padding="same", name=f"spectral{index}_conv", dtype=dtype)(x)
        x = batch_norm(f"spectral{index}_bn", dtype)(x)
        x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"spectral{index}", dtype=dtype)(x)
        x = keras.layers.AveragePooling2D(2, name=f"spectral{index}_pool", dtype=dtype)(x)
    x = keras.layers.Flatten(name="spectral_flatten", dtype=dtype)(x)  # keeps which frequencies a feature came from
    x = keras.layers.Dense(channels(SPECTRAL_FEATURES, width), name="spectral_dense", dtype=dtype)(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=output_name, dtype=dtype)(x)


def _policy_name(dtype):
    return keras.dtype_policies.get(dtype).name if dtype else None


@register_backbone("dnadet_spectral")
@keras.saving.register_keras_serializable(package="tfdnadet")
class TwoDomainEncoder(keras.Model):
    """DNA-Det encoder + spectral branch; features = LeakyReLU(Dense([spatial pool, spectral features]))."""

    def __init__(self, width: float = 1.0, dtype=None, **kwargs):
        feature_dim = channels(ENCODER_BLOCKS[-1][0], width)

        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        x = images
        for index in range(1, len(ENCODER_BLOCKS) + 1):
            x = encoder_block(x, index, width, dtype)
        spatial = keras.layers.GlobalAveragePooling2D(name=SPATIAL_POOL, dtype=dtype)(x)
        spectral = spectral_branch(images, width, dtype, SPECTRAL_POOL)
        joined = keras.layers.Concatenate(name="fusion_concat", dtype=dtype)([spatial, spectral])
        fused = keras.layers.Dense(feature_dim, name="fusion_dense", dtype=dtype)(joined)
        features = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=POOL_LAYER, dtype=dtype)(fused)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.layer_dtype = _policy_name(dtype)
        self.width = width
        self.feature_dim = feature_dim

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable, "dtype": self.layer_dtype}


@register_backbone("spectral")
@keras.saving.register_keras_serializable(package="tfdnadet")
class SpectralEncoder(keras.Model):
    """The spectral branch alone: features = the branch's dense features (layer `pool`)."""

    def __init__(self, width: float = 1.0, dtype=None, **kwargs):
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        features = spectral_branch(images, width, dtype, POOL_LAYER)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.layer_dtype = _policy_name(dtype)
        self.width = width
        self.feature_dim = channels(SPECTRAL_FEATURES, width)

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable, "dtype": self.layer_dtype}
