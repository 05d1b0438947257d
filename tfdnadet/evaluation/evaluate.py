"""Evaluating a model on a labelled data set: metrics, a confusion-matrix PNG and a JSON file."""

import os
from typing import Optional

import numpy as np

from tfdnadet.atomic import write_json
from tfdnadet.data.pipeline import LoadedImages
from tfdnadet.data.sources import align_to_classes, read_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.consistency import agreement_by_class, has_patch_grid, patch_agreement, patch_classes
from tfdnadet.evaluation.metrics import classification_metrics
from tfdnadet.plots import plot_confusion_matrix
from tfdnadet.inference import load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector


def evaluate_dataset(
    detector: Detector, data: str, batch_size: int = 16, class_names: Optional[list] = None, allow_outside_root: bool = False
) -> dict:
    """Metrics of the multiclass head on a folder/manifest whose classes are a subset of the model's."""
    loaded = load_labelled(detector, data, class_names, allow_outside_root)
    return evaluate_loaded(detector, loaded, data, batch_size)


def evaluate_loaded(detector: Detector, loaded: LoadedImages, data: str, batch_size: int = 16) -> dict:
    """evaluate_dataset on images already decoded from `data`; adds the mean patch agreement per class [3]."""
    metrics = loaded_metrics(detector, loaded, batch_size)
    metrics["data"] = data
    metrics["skipped"] = [{"path": p, "reason": r} for p, r in loaded.failures]
    if has_patch_grid(detector):
        agreement = patch_agreement(patch_classes(detector, loaded, batch_size))
        metrics["patch_agreement"] = agreement_by_class(loaded.labels, agreement, detector.class_names)
    return metrics


def load_labelled(detector: Detector, data: str, class_names: Optional[list] = None, allow_outside_root: bool = False) -> LoadedImages:
    """Decode a labelled folder/manifest for the model, labels in the model's class order."""
    images = align_to_classes(read_dataset(data, class_names, allow_outside_root), detector.class_names)
    loaded = load_for_detector(detector, images.paths, images.labels)
    if not len(loaded.labels):
        raise TfdnadetError(f"No usable images in {data}: {loaded.failure_summary()}")
    return loaded


def loaded_metrics(detector: Detector, loaded: LoadedImages, batch_size: int = 16) -> dict:
    """Classification metrics of the multiclass head on decoded, labelled images."""
    probabilities = predict_loaded(detector, loaded, batch_size)[MULTICLASS]
    return classification_metrics(loaded.labels, np.argmax(probabilities, axis=1), detector.class_names)


def write_evaluation(metrics: dict, out_dir: str, name: str = "evaluation") -> dict:
    """Write NAME.json and NAME_confusion.png into out_dir; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "confusion_png": os.path.join(out_dir, f"{name}_confusion.png")}
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), metrics["class_names"], paths["confusion_png"], f"{name}: {os.path.basename(str(metrics['data']))}")
    write_json(paths["json"], metrics)
    return paths
