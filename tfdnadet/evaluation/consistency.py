"""Global consistency, the paper's own argument made measurable [3, Fig. 3]: architecture traces are the same
all over an image, so the patches of a grid should agree on the architecture."""

from typing import Optional

import numpy as np
import tensorflow as tf

from tfdnadet.data.pipeline import LoadedImages
from tfdnadet.inference import predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector

GRID = 4  # [3, Fig. 3] each image is divided into a 4x4 grid of patches


def grid_patches(images: tf.Tensor, grid: int = GRID, size: Optional[int] = None) -> tf.Tensor:
    """[B, H, W, C] -> [B * grid * grid, size, size, C]: a grid x grid layout of patches, row by row.

    `size` defaults to the cell size (H // grid); a larger size makes evenly spaced patches overlap.
    """
    size = size or images.shape[1] // grid
    rows = np.linspace(0, images.shape[1] - size, grid).round().astype(int)
    columns = np.linspace(0, images.shape[2] - size, grid).round().astype(int)
    patches = [images[:, y : y + size, x : x + size] for y in rows for x in columns]
    return tf.reshape(tf.stack(patches, axis=1), [-1, size, size, images.shape[-1]])


def has_patch_grid(detector: Detector) -> bool:
    """Patch agreement needs a model trained on patches whose backbone takes any image size."""
    p = detector.preprocessing
    return detector.backbone.inputs[0].shape[1] is None and p.patch_size < p.input_size


def patch_classes(detector: Detector, loaded: LoadedImages, batch_size: int = 16, grid: int = GRID) -> np.ndarray:
    """The multiclass head's prediction for every grid patch of every image: int [N, grid * grid].

    Patches are never smaller than the training patches, which the encoder was trained to judge.
    """
    p = detector.preprocessing
    size = max(p.input_size // grid, p.patch_size)
    probabilities = predict_loaded(detector, loaded, batch_size, transform=lambda batch: grid_patches(batch, grid, size))
    return np.argmax(probabilities[MULTICLASS], axis=-1).reshape(len(loaded.images), grid * grid)


def patch_agreement(classes: np.ndarray) -> np.ndarray:
    """Per image, the share of its patches that vote for the patches' most common class (1.0 = all agree)."""
    classes = np.asarray(classes)
    return np.array([np.bincount(row).max() for row in classes], np.float64) / classes.shape[1]


def agreement_by_class(labels: np.ndarray, agreement: np.ndarray, class_names: list) -> dict:
    """Mean per-image patch agreement for each true class present: {class: mean}."""
    labels = np.asarray(labels)
    return {name: float(agreement[labels == i].mean()) for i, name in enumerate(class_names) if np.any(labels == i)}
