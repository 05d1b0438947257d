"""Heads on top of the encoder's pooled features. Outputs are float32 even under mixed precision."""

import keras


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
