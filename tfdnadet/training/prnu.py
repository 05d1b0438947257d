"""The PRNU baseline's closed-form fit: each class's fingerprint is its mean normalised noise residual."""

import os

import numpy as np

from tfdnadet.config import Config
from tfdnadet.data.pipeline import check_classes_present, load_images, make_image_dataset
from tfdnadet.data.sources import read_dataset
from tfdnadet.models.baselines import PRNUResidual
from tfdnadet.models.detector import MULTICLASS, Detector, save_detector
from tfdnadet.models.heads import MulticlassHead
from tfdnadet.training.trainer import TrainResult

CORRELATION_SCALE = 100.0  # correlations are small; scaled so the softmax is not flat


def fit_prnu(data: str, run_dir: str, config: Config, on_skipped=None, allow_outside_root: bool = False) -> TrainResult:
    """Average the residuals of each class at the base size (no upsampling: it would smooth the noise away)."""
    d = config.data
    images = read_dataset(data, d.class_names, allow_outside_root)
    loaded = load_images(images, d.base_size, d.max_pixels, min_size=1)
    if loaded.failures and on_skipped:
        on_skipped(loaded.failure_summary())
    check_classes_present(loaded, images.class_names, "training")
    backbone = PRNUResidual(image_size=d.base_size, name="encoder")
    features = np.concatenate([backbone.predict(batch, verbose=0) for batch in make_image_dataset(loaded.images, None, d.base_size, 64)])
    fingerprints = np.stack([features[loaded.labels == c].mean(axis=0) for c in range(len(images.class_names))])
    fingerprints /= np.maximum(np.linalg.norm(fingerprints, axis=1, keepdims=True), 1e-12)
    head = MulticlassHead(backbone.feature_dim, len(images.class_names), name=MULTICLASS)
    head.get_layer("logits").set_weights([CORRELATION_SCALE * fingerprints.T, np.zeros(len(images.class_names), np.float32)])
    preprocessing = {"base_size": d.base_size, "input_size": d.base_size, "patch_size": 1, "max_pixels": d.max_pixels}
    detector = Detector(backbone, {}, {}, preprocessing, {**config.to_dict(), "data_source": os.path.abspath(data), "method": "prnu"})
    detector.add_head(MULTICLASS, head, {"class_names": list(images.class_names)})
    model_dir = os.path.join(run_dir, "model")
    os.makedirs(run_dir, exist_ok=True)
    save_detector(detector, model_dir)
    return TrainResult(run_dir, model_dir, 1, 1, {})
