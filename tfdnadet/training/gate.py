"""Fitting the degradation gate of a model with a robust expert (tfdnadet.models.gate)."""

import numpy as np
from sklearn.linear_model import LogisticRegression

from tfdnadet.data.perturb import ATTACKS, apply_attack
from tfdnadet.data.pipeline import LoadedImages
from tfdnadet.inference import predict_loaded_with_features
from tfdnadet.models.detector import Detector
from tfdnadet.models.encoder import block_layer_name
from tfdnadet.models.gate import GATE_BLOCK, ChannelMoments

HARMLESS = ("relight",)  # attacks the clean runs hold up under (closed set 99.2 relit): the gate calls them clean
GATE_STRENGTH = 0.1  # inverse L2 weight of the logistic regression, on standardised moments


def fit_gate(detector: Detector, train: LoadedImages, seed: int, batch_size: int) -> list:
    """The gate's weights [kernel [2C, 1], bias [1]]: a logistic regression, one sample per grid cell, from the block-4
    moments of `detector` (the first clean run) on the training images (clean: 0) and on each Table 5 attack of them
    (seeded; degraded: 1, harmless: 0), the two sides weighted equally. Standardising is folded into the weights."""
    moments, targets = [], []
    for attack in (None, *ATTACKS):
        images = train.images if attack is None else apply_attack(train.images, attack, seed)
        moments.append(cell_moments(detector, LoadedImages(images, train.labels, [], []), batch_size))
        targets.append(np.full(len(moments[-1]), float(attack is not None and attack not in HARMLESS)))
    return fit_logistic(np.concatenate(moments), np.concatenate(targets))


def fit_logistic(features: np.ndarray, targets: np.ndarray) -> list:
    """[kernel [F, 1], bias [1]] of a class-balanced logistic regression on standardised `features`, the
    standardising folded in: sigmoid(features @ kernel + bias) is its probability of target 1."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    regression = LogisticRegression(C=GATE_STRENGTH, class_weight="balanced", max_iter=2000)
    regression.fit((features - mean) / scale, targets)
    kernel = regression.coef_[0] / scale
    bias = regression.intercept_[0] - float(np.sum(kernel * mean))
    return [kernel[:, None].astype(np.float32), np.asarray([bias], np.float32)]


def cell_moments(detector: Detector, loaded: LoadedImages, batch_size: int, chunk: int = 256) -> np.ndarray:
    """[cells, 2C]: the gate's inputs for every grid cell of every image (feature maps held `chunk` images at a time)."""
    layer, moments = block_layer_name(GATE_BLOCK), ChannelMoments()
    parts = []
    for start in range(0, len(loaded.images), chunk):
        part = LoadedImages(loaded.images[start : start + chunk], loaded.labels[start : start + chunk], [], [])
        maps = predict_loaded_with_features(detector, part, (layer,), batch_size)[1][layer]
        parts.append(moments(maps.reshape(-1, *maps.shape[2:])).numpy())
    return np.concatenate(parts)
