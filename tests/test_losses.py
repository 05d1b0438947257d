import numpy as np
import tensorflow as tf

from tfdnadet.losses import UncertaintyWeighting, supcon_loss


def supcon_reference(z, labels, temperature):
    """Eq. 1 of the paper / Khosla et al., loop by loop, averaged over anchors that have a positive."""
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        others = [a for a in range(len(z)) if a != i]
        denominator = sum(np.exp(z[i] @ z[a] / temperature) for a in others)
        losses.append(-np.mean([np.log(np.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]))
    return np.mean(losses)


def test_supcon_matches_numpy_reference():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 5))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 3, 1, 2, 0])  # class 3 has a single patch: no positive
    for temperature in (0.07, 0.5):
        got = supcon_loss(tf.constant(z, tf.float32), tf.constant(labels), temperature).numpy()
        np.testing.assert_allclose(got, supcon_reference(z, labels, temperature), rtol=1e-4)


def test_supcon_rewards_clustered_classes_and_handles_no_positives():
    labels = tf.constant([0, 0, 1, 1])
    clustered = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mixed = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert supcon_loss(clustered, labels, 0.1) < supcon_loss(mixed, labels, 0.1)
    assert supcon_loss(clustered, tf.constant([0, 1, 2, 3]), 0.1).numpy() == 0.0


def test_uncertainty_weights_are_learned():
    weighting = UncertaintyWeighting(2)
    weighting.build()
    optimizer = tf.keras.optimizers.SGD(0.1)
    for _ in range(20):
        with tf.GradientTape() as tape:
            total = weighting([tf.constant(4.0), tf.constant(0.1)])
        optimizer.apply_gradients(zip(tape.gradient(total, weighting.trainable_variables), weighting.trainable_variables))
    log_variances = weighting.log_variances.numpy()
    # The optimum is s_i = log(L_i): the larger loss gets the smaller weight exp(-s).
    assert log_variances[0] > 0.5 and log_variances[1] < -0.5
    assert np.exp(-log_variances[0]) < np.exp(-log_variances[1])
