"""Heads on top of the encoder's pooled features. Outputs are float32 even under mixed precision."""

import keras
from keras import ops

from tfdnadet.models.encoder import ENCODER_BLOCKS, POOL_LAYER, encoder_block

EMBEDDING_LAYER = "embedding"  # a binary head's hidden layer: the space its contrastive loss shapes


@keras.saving.register_keras_serializable(package="tfdnadet")
class ProjectionHead(keras.Model):
    """[App. A, Table 7] Linear 512, ReLU, Linear 128, L2-normalise: the space of the contrastive loss."""

    def __init__(self, feature_dim: int, hidden_dim: int = 512, projection_dim: int = 128, dtype=None, **kwargs):
        # === Layers ===
        hidden = keras.layers.Dense(hidden_dim, activation="relu", name="hidden", dtype=dtype)
        project = keras.layers.Dense(projection_dim, name="project", dtype="float32")
        normalize = keras.layers.UnitNormalization(axis=-1, name="normalize", dtype="float32")

        # === Functional Model ===
        features = keras.Input(shape=(feature_dim,), name="features")
        outputs = normalize(project(hidden(features)))
        super().__init__(inputs=features, outputs=outputs, **kwargs)

        # === Config ===
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.projection_dim = projection_dim

    def get_config(self):
        return {
            "feature_dim": self.feature_dim,
            "hidden_dim": self.hidden_dim,
            "projection_dim": self.projection_dim,
            "name": self.name,
            "trainable": self.trainable,
        }


@keras.saving.register_keras_serializable(package="tfdnadet")
class MulticlassHead(keras.Model):
    """[App. A, Table 7] Linear(class num): logits over real + architectures."""

    kind = "multiclass"

    def __init__(self, feature_dim: int, num_classes: int, **kwargs):
        # === Layers ===
        dense = keras.layers.Dense(num_classes, name="logits", dtype="float32")

        # === Functional Model ===
        features = keras.Input(shape=(feature_dim,), name="features")
        super().__init__(inputs=features, outputs=dense(features), **kwargs)

        # === Config ===
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def get_config(self):
        return {"feature_dim": self.feature_dim, "num_classes": self.num_classes, "name": self.name, "trainable": self.trainable}


@keras.saving.register_keras_serializable(package="tfdnadet")
class BinaryHead(keras.Model):
    """One-vs-all head [Khoo et al. 3.1-3.2]: one float32 logit, "made by this architecture" vs everything else.

    With `finetune_top=0` it reads the pooled features [B, input_channels]. With K > 0 it reads the feature map of
    encoder block 8-K and holds its own copies of blocks 9-K..8 and the pooling (Khoo's secondary module), so the
    saved head is self-contained and the shared backbone is never changed. Then a ReLU embedding and a cosine logit.
    """

    kind = "binary"

    def __init__(
        self,
        input_channels: int,
        hidden_dim: int = 512,
        finetune_top: int = 0,
        width: float = 1.0,
        cosine_scale: float = 30.0,
        dtype=None,
        **kwargs,
    ):
        # === Functional Model ===
        if finetune_top:
            inputs = keras.Input(shape=(None, None, input_channels), name="feature_map")
            x = inputs
            for index in range(len(ENCODER_BLOCKS) - finetune_top + 1, len(ENCODER_BLOCKS) + 1):
                x = encoder_block(x, index, width, dtype)
            x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER, dtype=dtype)(x)
        else:
            inputs = keras.Input(shape=(input_channels,), name="features")
            x = inputs
        embedding = keras.layers.Dense(hidden_dim, activation="relu", name=EMBEDDING_LAYER, dtype=dtype)(x)
        logit = CosineLogit(cosine_scale, name="logit", dtype="float32")(embedding)
        super().__init__(inputs=inputs, outputs=logit, dtype=dtype, **kwargs)

        # === Config ===
        self.input_channels = input_channels
        self.hidden_dim = hidden_dim
        self.finetune_top = finetune_top
        self.width = width
        self.cosine_scale = cosine_scale
        self.layer_dtype = keras.dtype_policies.get(dtype).name if dtype else None  # as in Encoder: mixed precision reloads

    def get_config(self):
        return {
            "input_channels": self.input_channels,
            "hidden_dim": self.hidden_dim,
            "finetune_top": self.finetune_top,
            "width": self.width,
            "cosine_scale": self.cosine_scale,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": self.layer_dtype,
        }


@keras.saving.register_keras_serializable(package="tfdnadet")
class CosineLogit(keras.layers.Layer):
    """logit = scale * (cos(x, direction) - margin), both learned: positives lie in a cone around one direction.

    A plain linear logit grows without bound along its normal, so images of an architecture no head knows, which
    merely differ from the negatives, often score as positives; the cone bounds that (cosine logits with a fixed
    scale, as in NormFace/CosFace; 30 is their usual scale).
    """

    def __init__(self, scale: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.direction = self.add_weight(name="direction", shape=(input_shape[-1], 1), initializer="glorot_uniform")
        self.margin = self.add_weight(name="margin", shape=(1,), initializer="zeros")

    def call(self, inputs):
        features = ops.normalize(ops.cast(inputs, self.compute_dtype), axis=-1)
        return self.scale * (ops.matmul(features, ops.normalize(self.direction, axis=0)) - self.margin)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
