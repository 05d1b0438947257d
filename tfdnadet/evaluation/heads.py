"""Evaluating one-vs-all heads [Khoo 3.2, 4]: per-head P/R/F1/AUC, attribution rates, the open-set check, thresholds
and calibrating a head's threshold."""

import datetime
import os
from typing import Optional

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from tfdnadet.atomic import write_json
from tfdnadet.data.sources import read_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.inference import load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.heads import BinaryHead
from tfdnadet.model_metadata import read_metadata
from tfdnadet.models.model_dir import load_detector, require_head, write_head_info
from tfdnadet.verdict import REAL, UNKNOWN, binary_heads, threshold_of, verdicts


def binary_metrics(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 of `score >= threshold` and the threshold-free ROC AUC (None without both classes)."""
    truth = np.asarray(truth, bool)
    predicted = np.asarray(scores) >= threshold
    hits = int(np.sum(truth & predicted))
    precision = hits / int(predicted.sum()) if predicted.any() else 0.0
    recall = hits / int(truth.sum()) if truth.any() else None
    f1 = 2 * precision * recall / (precision + recall) if recall and precision + recall else 0.0
    both = truth.any() and not truth.all()
    return {
        "threshold": float(threshold),
        "precision": float(precision),
        "recall": None if recall is None else float(recall),
        "f1": float(f1),
        "auc": float(roc_auc_score(truth, scores)) if both else None,
        "positives": int(truth.sum()),
        "negatives": int((~truth).sum()),
        "predicted_positive": int(predicted.sum()),
    }


def pick_threshold(truth: np.ndarray, scores: np.ndarray, target_precision: Optional[float] = None) -> dict:
    """The threshold of best F1, or the lowest (most recall) whose precision reaches `target_precision`."""
    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        raise TfdnadetError("Choosing a threshold needs both positive and negative images.")
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if target_precision is None:
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
        index = int(np.argmax(f1))
    else:
        reaching = np.flatnonzero(precision >= target_precision)
        if not len(reaching):
            raise TfdnadetError(f"No threshold reaches precision {target_precision} on this data (best: {precision.max():.3f}).")
        index = int(reaching[0])
    return binary_metrics(truth, scores, float(thresholds[index]))


def negatives_threshold(negative_scores: np.ndarray, false_positive_rate: float) -> float:
    """The lowest threshold at which at most `false_positive_rate` of the negatives score >= it."""
    ranked = np.sort(np.asarray(negative_scores, np.float32))[::-1]
    allowed = int(np.floor(false_positive_rate * len(ranked) + 1e-9))
    if allowed >= len(ranked):
        return float(ranked[-1])
    # Just above the first negative that may not fire, in float32: the SavedModel compares in float32 too.
    return float(np.nextafter(ranked[allowed], np.float32(np.inf)))


def calibrate_head(
    model_dir: str, name: str, data: str, target_precision: Optional[float] = None, batch_size: int = 16
) -> dict:
    """Pick a binary head's threshold on labelled images (class `name` = positives, others negatives) and store it."""
    if target_precision is not None and not 0 < target_precision <= 1:
        raise TfdnadetError(f"--target-precision must be in (0, 1]. Received: {target_precision}")
    read_metadata(model_dir)
    require_head(model_dir, name)
    detector = load_detector(model_dir)
    if detector.heads[name].kind != BinaryHead.kind:
        raise TfdnadetError(f"Head '{name}' is a {detector.heads[name].kind} head; only binary heads have a threshold.")
    images = read_dataset(data)
    if name not in images.class_names:
        raise TfdnadetError(f"Calibration data {data} has no class '{name}' (its classes: {', '.join(images.class_names)}).")
    loaded = load_for_detector(detector, images.paths, images.labels)
    truth = loaded.labels == images.class_names.index(name)
    scores = predict_loaded(detector, loaded, batch_size)[name][:, 0]
    chosen = pick_threshold(truth, scores, target_precision)
    info = {
        **detector.head_info[name],
        **validation_fields(chosen),
        "threshold_rule": "best F1" if target_precision is None else f"precision >= {target_precision}",
        "calibration_data": os.path.abspath(data),
        "calibrated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_head_info(model_dir, name, info)
    return info


def validation_fields(metrics: dict) -> dict:
    """What a head records of its validation metrics (see `tfdnadet.evaluation.heads.binary_metrics`)."""
    return {
        "threshold": metrics["threshold"],
        "val_precision": metrics["precision"],
        "val_recall": metrics["recall"],
        "val_f1": metrics["f1"],
        "val_auc": metrics["auc"],
        "val_count": metrics["positives"] + metrics["negatives"],
    }


def evaluate_heads(detector: Detector, data: str, batch_size: int = 16, class_names: Optional[list] = None) -> dict:
    """All binary heads and the combined verdict on labelled images; any class names, known to the model or not."""
    if not binary_heads(detector):
        raise TfdnadetError("This model has no binary heads: add one with `tfdnadet add-head NAME --positives DIR`.")
    images = read_dataset(data, class_names)
    loaded = load_for_detector(detector, images.paths, images.labels)
    if not len(loaded.labels):
        raise TfdnadetError(f"No usable images in {data}: {loaded.failure_summary()}")
    outputs = predict_loaded(detector, loaded, batch_size)
    decided = verdicts(detector, outputs)
    truth = np.asarray([images.class_names[label] for label in loaded.labels])
    heads = {name: binary_metrics(truth == name, outputs[name][:, 0], threshold_of(detector, name)) for name in binary_heads(detector)}
    return {
        "data": data,
        "count": int(len(truth)),
        "heads": heads,
        "rates": _attribution_rates(decided),
        "verdict_accuracy": _verdict_accuracy(truth, decided, set(heads) | {REAL}),
        "open_set": _open_set(detector, truth, decided),
        "skipped": [{"path": p, "reason": r} for p, r in loaded.failures],
    }


def _attribution_rates(decided: list) -> dict:
    """Khoo's failed attribution (judged fake, no head positive), multiple attribution, self-contradiction (CR)."""
    return {
        "failed_attribution": float(np.mean([v.failed_attribution for v in decided])),
        "multiple_attribution": float(np.mean([len(v.architectures) > 1 for v in decided])),
        "self_contradiction": float(np.mean([v.self_contradiction for v in decided])),
    }


def _verdict_accuracy(truth: np.ndarray, decided: list, answerable: set) -> Optional[float]:
    """Share of verdicts equal to the true class, over images of real or of an architecture with a binary head."""
    pairs = [(name, v.label) for name, v in zip(truth, decided) if name in answerable]
    return float(np.mean([name == label for name, label in pairs])) if pairs else None


def _open_set(detector: Detector, truth: np.ndarray, decided: list) -> dict:
    """Images of architectures no head knows: the share answered `unknown-generator` or `real` (not misattributed)."""
    known = set(binary_heads(detector)) | {REAL} | set(detector.class_names if MULTICLASS in detector.heads else [])
    unknown = [v.label for name, v in zip(truth, decided) if name not in known]
    return {
        "classes": sorted(set(truth) - known),
        "count": len(unknown),
        "rate": float(np.mean([label in (UNKNOWN, REAL) for label in unknown])) if unknown else None,
    }


def write_heads_evaluation(metrics: dict, out_dir: str, name: str = "heads_evaluation") -> str:
    """Write NAME.json into out_dir atomically; return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    write_json(path, metrics)
    return path
