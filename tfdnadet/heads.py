"""Managing the named heads of a model directory: list, remove, calibrate a threshold."""

import datetime
import os
import re
import shutil
import tempfile
from typing import Optional

from tfdnadet.data.sources import read_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.heads import pick_threshold
from tfdnadet.inference import load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS, head_names, load_detector, read_head_info, read_metadata, write_head_info
from tfdnadet.models.heads import BinaryHead

MODEL_ENV = "TFDNADET_MODEL"
DEFAULT_MODEL_DIR = "model"
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # also names serving outputs (tfdnadet.serving)
LIST_FIELDS = ("name", "kind", "positives", "threshold", "val_precision", "val_recall", "created")


def default_model_dir() -> str:
    """$TFDNADET_MODEL, else ./model."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL_DIR


def check_head_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise TfdnadetError(f"Head names use letters, digits and '_' (at most 64). Received: {name!r}")
    if name == MULTICLASS:
        raise TfdnadetError(f"'{MULTICLASS}' is the multiclass head's name; choose another name for a binary head.")


def list_heads(model_dir: str) -> list:
    """One row per head: name, kind, positives count, threshold, validation precision/recall, creation date."""
    read_metadata(model_dir)
    return [{key: read_head_info(model_dir, name).get(key) for key in LIST_FIELDS} for name in head_names(model_dir)]


def require_head(model_dir: str, name: str) -> None:
    names = head_names(model_dir)
    if name not in names:
        raise TfdnadetError(f"No head '{name}' in {model_dir}. Its heads: {', '.join(names) or 'none'}.")


def remove_head(model_dir: str, name: str) -> list:
    """Delete one head folder (moved aside in one rename first); returns the heads left."""
    read_metadata(model_dir)
    require_head(model_dir, name)
    if len(head_names(model_dir)) == 1:
        raise TfdnadetError(f"'{name}' is the only head of {model_dir}; a model needs at least one.")
    folder = os.path.join(model_dir, "heads", name)
    aside = tempfile.mkdtemp(prefix=f".{name}.removed-", dir=os.path.dirname(folder))
    os.replace(folder, os.path.join(aside, name))
    shutil.rmtree(aside)
    return head_names(model_dir)


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
