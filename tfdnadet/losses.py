"""Supervised contrastive loss over patches and the uncertainty-weighted sum of losses [4.2]."""

import keras
import tensorflow as tf


def supcon_loss(features: tf.Tensor, labels: tf.Tensor, temperature: float = 0.07) -> tf.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020; Eq. 1 of the paper), averaged over anchors.

    features: [N, D] L2-normalised (every patch is an anchor); labels: [N]. Patches of the same class are
    positives. Anchors with no positive in the batch are left out; with none at all the loss is 0.
    """
    features = tf.cast(features, tf.float32)
    labels = tf.reshape(labels, [-1])
    count = tf.shape(features)[0]
    logits = tf.matmul(features, features, transpose_b=True) / temperature
    not_self = 1.0 - tf.eye(count)
    # Subtracting the row maximum leaves the softmax unchanged and keeps exp() finite.
    logits = logits - tf.stop_gradient(tf.reduce_max(logits, axis=1, keepdims=True))
    log_denominator = tf.math.log(tf.reduce_sum(tf.exp(logits) * not_self, axis=1, keepdims=True))
    log_prob = logits - log_denominator
    positives = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32) * not_self
    positive_count = tf.reduce_sum(positives, axis=1)
    has_positive = positive_count > 0
    mean_log_prob = tf.reduce_sum(positives * log_prob, axis=1) / tf.maximum(positive_count, 1.0)
    anchors = tf.maximum(tf.reduce_sum(tf.cast(has_positive, tf.float32)), 1.0)
    return -tf.reduce_sum(tf.where(has_positive, mean_log_prob, 0.0)) / anchors


@keras.saving.register_keras_serializable(package="tfdnadet")
class UncertaintyWeighting(keras.layers.Layer):
    """Kendall et al. 2018: total = sum_i exp(-s_i) * L_i + s_i with learned s_i = log(sigma_i^2)."""

    def __init__(self, num_losses: int = 2, **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        self.num_losses = num_losses

    def build(self, input_shape=None):
        self.log_variances = self.add_weight(
            name="log_variances", shape=(self.num_losses,), initializer="zeros", dtype="float32"
        )

    def call(self, losses):
        losses = tf.stack([tf.cast(loss, tf.float32) for loss in losses])
        return tf.reduce_sum(tf.exp(-self.log_variances) * losses + self.log_variances)

    def get_config(self):
        config = super().get_config()
        config.update({"num_losses": self.num_losses})
        return config
