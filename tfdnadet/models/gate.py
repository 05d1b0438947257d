"""A clean expert, a robust expert and a degradation gate in one model.

Training under the Table 5 attacks makes a model hold up under blur, JPEG, noise and resizing, but costs it the
generators it never saw: those attacks wipe out the high-frequency traces that tell architectures apart, so the
augmented model learns what survives them, which is specific to the training generators (README, Budget sweep).
So a model keeps both: the runs trained on clean images answer for clean images, the runs trained under attack for
degraded ones, and a gate says which an image is. The gate is a logistic regression on the channel means and
spreads of encoder block 4 (for a stage 2 that fine-tunes from block 5, the stage-1 blocks, pretrained to tell
image transformations apart), fitted on the training images, clean and attacked. Each patch's logits are
(1 - g) x the clean runs' mean + g x the robust runs' mean, g the gate's probability that the patch is degraded.
"""

import keras
from keras import ops

GATE_BLOCK = 4  # the encoder block the gate reads
GATE_LAYER = "gate"


@keras.saving.register_keras_serializable(package="tfdnadet")
class ChannelMoments(keras.layers.Layer):
    """[B, H, W, C] -> float32 [B, 2C]: each channel's mean and standard deviation over the map."""

    def call(self, maps):
        maps = ops.cast(maps, "float32")
        mean = ops.mean(maps, axis=(1, 2))
        spread = ops.sqrt(ops.maximum(ops.mean(ops.square(maps), axis=(1, 2)) - ops.square(mean), 0.0))
        return ops.concatenate([mean, spread], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package="tfdnadet")
class GatedMulticlassHead(keras.Model):
    """Logits over the classes from an ensemble's pooled features [clean runs' | robust runs' | gate]: each expert's
    `logits` layer averages its runs (kernels divided by the run count), mixed by the gate's last feature."""

    kind = "multiclass"

    def __init__(self, clean_dim: int, robust_dim: int, num_classes: int, **kwargs):
        # === Layers ===
        clean_logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")
        robust_logits = keras.layers.Dense(num_classes, name="robust_logits", dtype="float32")

        # === Functional Model ===
        features = keras.Input(shape=(clean_dim + robust_dim + 1,), name="features")
        values = ops.cast(features, "float32")
        gate = values[:, -1:]
        mixed = (1.0 - gate) * clean_logits(values[:, :clean_dim]) + gate * robust_logits(values[:, clean_dim:-1])
        super().__init__(inputs=features, outputs=mixed, **kwargs)

        # === Config ===
        self.clean_dim = clean_dim
        self.robust_dim = robust_dim
        self.num_classes = num_classes

    def get_config(self):
        return {
            "clean_dim": self.clean_dim,
            "robust_dim": self.robust_dim,
            "num_classes": self.num_classes,
            "name": self.name,
            "trainable": self.trainable,
        }
