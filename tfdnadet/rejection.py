"""Rejecting images of architectures a model never learnt: a knownness score per image and a stored threshold.

Knownness scores (higher = more like a class the model knows):
    msp        the multiclass head's highest probability (the usual open-set baseline)
    heads      the best binary head's score minus its own threshold: below 0 when no head (`real` included) fires
    gaussian   minus the squared Mahalanobis distance of the image's pooled backbone features (the space the
               contrastive loss shapes through the projection) to the nearest class mean, under one covariance
               shared by the classes: a class-conditional Gaussian [Lee et al. 2018], its covariance shrunk by the
               Ledoit-Wolf estimate; fitted on training features, or on them plus the validation images of known
               classes (`fit_validation`: their other generator models widen each class towards a new seed)

The rule lives in the model directory as rejection.json: {"score", "threshold", "means", "precision", ...}, its matrices
in an .npz beside it (tfdnadet.models.model_dir). An image whose knownness is below the threshold has its multiclass
answer rejected (tfdnadet.verdict). All scores are tensor ops, so `predict` and the SavedModel compute them the same way.
"""

from typing import Optional

import numpy as np
import tensorflow as tf
from sklearn.covariance import ledoit_wolf_shrinkage

from tfdnadet.errors import TfdnadetError
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.encoder import POOL_LAYER
from tfdnadet.verdict import binary_heads, threshold_of

MSP, HEADS, GAUSSIAN = "msp", "heads", "gaussian"
SCORES = (MSP, HEADS, GAUSSIAN)


def check_score(detector: Detector, score: str) -> None:
    """A clear error for a score this model cannot compute."""
    if score not in SCORES:
        raise TfdnadetError(f"Unknown rejection score {score!r}. Known: {', '.join(SCORES)}.")
    if score in (MSP, GAUSSIAN) and MULTICLASS not in detector.heads:
        raise TfdnadetError(f"The {score!r} rejection score needs a multiclass head; this model has only binary heads.")
    if score == HEADS and not binary_heads(detector):
        raise TfdnadetError("The 'heads' rejection score needs binary heads: add one with `tfdnadet add-head`.")


def rejection_layers(detector: Detector, score: Optional[str] = None) -> tuple:
    """The backbone layers the score reads from the detector's forward pass: pooled features for `gaussian`."""
    return (POOL_LAYER,) if (score or stored_score(detector)) == GAUSSIAN else ()


def pooled_by_image(features) -> tf.Tensor:
    """float32 [B, D]: pooled features [B, n, D] of each image's grid, averaged over the grid as its probabilities are."""
    return tf.reduce_mean(tf.cast(features, tf.float32), axis=1)


def knownness(detector: Detector, probabilities: dict, features: dict, score: Optional[str] = None) -> tf.Tensor:
    """float32 [B] knownness of each image from one forward pass (`Detector.forward` with `rejection_layers`): the
    heads' probabilities and, for `gaussian`, the pooled features. Tensor ops, traced by the SavedModel export."""
    score = score or stored_score(detector)
    if score == MSP:
        return tf.reduce_max(tf.convert_to_tensor(probabilities[MULTICLASS], tf.float32), axis=-1)
    if score == HEADS:
        margins = [tf.convert_to_tensor(probabilities[n], tf.float32)[:, 0] - threshold_of(detector, n) for n in binary_heads(detector)]
        return tf.reduce_max(tf.stack(margins, axis=1), axis=1)
    return gaussian_knownness(pooled_by_image(features[POOL_LAYER]), *stored_gaussian(detector))


def gaussian_knownness(pooled, means, precision) -> tf.Tensor:
    """float32 [B]: minus the squared Mahalanobis distance of pooled features [B, D] to the nearest class mean."""
    means, precision = (tf.constant(value, tf.float32) for value in (means, precision))
    offsets = tf.convert_to_tensor(pooled, tf.float32)[:, None, :] - means[None]  # [B, C, D]
    distances = tf.einsum("bcd,de,bce->bc", offsets, precision, offsets)
    return -tf.reduce_min(distances, axis=-1)


def stored_score(detector: Detector) -> str:
    """The score the model was calibrated with; maximum softmax probability for an uncalibrated model."""
    return detector.rejection["score"] if detector.rejection else MSP


def stored_gaussian(detector: Detector) -> tuple:
    """(class means [C, D], shared precision matrix [D, D]) of the model's gaussian rule."""
    rule = detector.rejection or {}
    if rule.get("score") != GAUSSIAN:
        raise TfdnadetError("This model has no fitted Gaussian: run `tfdnadet calibrate-rejection MODEL --score gaussian` first.")
    return np.asarray(rule["means"], np.float32), np.asarray(rule["precision"], np.float32)


def fit_gaussian(features: np.ndarray, labels: np.ndarray, class_names: list) -> dict:
    """Class means and the precision of the shared within-class covariance, shrunk towards its mean variance by
    the Ledoit-Wolf share (few images per class, many features); a class without images is an error."""
    missing = [name for i, name in enumerate(class_names) if not np.any(labels == i)]
    if missing:
        raise TfdnadetError(f"The training data has no images of {', '.join(missing)}: every class needs a mean.")
    features = features.astype(np.float64)
    means = np.stack([features[labels == i].mean(axis=0) for i in range(len(class_names))])
    centred = features - means[labels]
    shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    covariance = centred.T @ centred / len(features)
    ridge = max(np.trace(covariance) / len(covariance), 1e-6)
    covariance = (1 - shrinkage) * covariance + shrinkage * ridge * np.eye(len(covariance))
    return {"means": means.tolist(), "precision": np.linalg.inv(covariance).tolist(), "shrinkage": shrinkage}
