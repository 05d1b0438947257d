"""The training-time model of patchwise contrastive learning [4.2]: encoder + projection + classifier."""

import keras
import tensorflow as tf

from tfdnadet.losses import UncertaintyWeighting, supcon_loss
from tfdnadet.models.heads import MulticlassHead, ProjectionHead
from tfdnadet.training.distribute import task_count


class PatchContrastiveModel(keras.Model):
    """Trains the backbone with SupCon on projections + CE on logits, weighted by learned uncertainty.

    With loss="ce" only the cross-entropy is used (the paper's Base / Base+PT ablations). With num_classes=1 the
    classifier is one one-vs-all logit (`classifier`, e.g. a binary head's logit layer, replaces the multiclass head):
    label 0 is its architecture, labels >= 1 are the negative classes, which SupCon keeps apart from each other; the
    sigmoid cross-entropy weighs positives and negatives half each.
    """

    def __init__(
        self, backbone, num_classes, projection_hidden=512, projection_dim=128, temperature=0.07, loss="pcl", classifier=None, **kwargs
    ):
        super().__init__(**kwargs)
        feature_dim = backbone.outputs[0].shape[-1]
        # === Layers ===
        self.backbone = backbone
        self.projection = ProjectionHead(feature_dim, projection_hidden, projection_dim, dtype=backbone.dtype_policy, name="projection")
        self.classifier = classifier or MulticlassHead(feature_dim, num_classes, name="multiclass")
        self.weighting = UncertaintyWeighting(2, name="uncertainty_weighting")
        self.weighting.build()
        if loss != "pcl":  # plain cross-entropy leaves them unused: no gradients to ask for
            self.projection.trainable = False
            self.weighting.trainable = False
        # === Metrics ===
        if num_classes == 1:
            self.accuracy_metric = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)  # on logits
        else:
            self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.supcon_metric = keras.metrics.Mean(name="supcon")
        self.ce_metric = keras.metrics.Mean(name="ce")
        # === Config ===
        self.num_classes = num_classes
        self.temperature = temperature
        self.loss_mode = loss

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        return {"logits": self.classifier(features, training=training), "projection": self.projection(features, training=training)}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds a model under a strategy by reducing a whole (images, labels) batch across replicas, which
        # MultiWorkerMirroredStrategy cannot (tf.distribute reduces single tensors): the trainer builds it first.
        if not (self.built and self.optimizer.built):
            super()._maybe_symbolic_build(iterator, data_batch)

    def train_step(self, data):
        return _logs_for_worker_mean(super().train_step(data))

    def test_step(self, data):
        return _logs_for_worker_mean(super().test_step(data))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logits = tf.cast(y_pred["logits"], tf.float32)
        if self.num_classes == 1:
            logits, targets = logits[:, 0], tf.cast(tf.equal(y, 0), tf.float32)
            ce = _balanced_sigmoid_cross_entropy(targets, logits)
        else:
            logits, targets = logits, y
            ce = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        if self.loss_mode == "pcl":
            contrastive = supcon_loss(y_pred["projection"], y, self.temperature)
            total = self.weighting([contrastive, ce])
            self.supcon_metric.update_state(contrastive)
        else:
            total = ce
        self.ce_metric.update_state(ce)
        self.accuracy_metric.update_state(targets, logits)
        # Keras sums gradients over replicas, so each replica contributes its share.
        return total / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)


def _balanced_sigmoid_cross_entropy(targets, logits):
    """Mean over positives and mean over negatives, averaged: a batch holds k positives but k per negative class."""
    losses = tf.nn.sigmoid_cross_entropy_with_logits(targets, logits)
    positives = tf.reduce_sum(targets)
    negatives = tf.reduce_sum(1.0 - targets)
    return 0.5 * (tf.reduce_sum(losses * targets) / tf.maximum(positives, 1.0) + tf.reduce_sum(losses * (1.0 - targets)) / tf.maximum(negatives, 1.0))


def _logs_for_worker_mean(logs: dict) -> dict:
    """Keras averages a step's logs over several workers along axis 0, which a scalar lacks: give them one."""
    if task_count(tf.distribute.get_strategy()) == 1:
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
