"""The model directory, the one place that writes and loads it, and the management of its heads (its location and
detector.json are read, without TensorFlow, by tfdnadet.model_metadata).

Layout:
    detector.json              format, preprocessing (tfdnadet.models.detector.Preprocessing), config, backbone hash
    backbone.keras             the encoder
    heads/<name>/head.keras    one folder per head, written on its own
    heads/<name>/head.json     kind, classes, threshold, hash of the backbone it was trained on
    gfd/decoder.keras          GFD-Net's fingerprint decoder G_dec (models trained with --method gfd only)
    rejection.json             optional: the open-set rejection rule (tfdnadet.rejection), with its backbone hash
    rejection-<sha>.npz        its matrices (class means, precision), named in rejection.json
"""

import hashlib
import io
import os
import re
import shutil
import tempfile

import keras
import numpy as np

from tfdnadet.atomic import atomic_path, write_json
from tfdnadet.errors import TfdnadetError
from tfdnadet.model_metadata import FORMAT, FORMAT_VERSION, METADATA_FILE, read_json, read_metadata
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing, weights_hash

DECODER_FILE = os.path.join("gfd", "decoder.keras")
REJECTION_FILE = "rejection.json"
# Matrices of a rule, kept out of its JSON: as text, a 16-run ensemble's 2048 x 2048 precision is 87 MB and takes 3 s to read.
REJECTION_ARRAYS = ("means", "precision")
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # also names serving outputs (tfdnadet.serving)
LIST_FIELDS = ("name", "kind", "positives", "threshold", "val_precision", "val_recall", "created")


def save_detector(detector: Detector, path: str) -> None:
    """Write the whole model directory atomically."""
    with atomic_path(path, directory=True) as temporary:
        detector.backbone.save(os.path.join(temporary, "backbone.keras"))
        for name in detector.heads:
            write_head(temporary, name, detector.heads[name], detector.head_info[name])
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone_sha256": weights_hash(detector.backbone),
            "preprocessing": detector.preprocessing.to_dict(),
            "config": detector.config,
        }
        write_json(os.path.join(temporary, METADATA_FILE), metadata)
        if detector.rejection:
            write_rejection(temporary, detector.rejection)


def write_head(model_dir: str, name: str, head: keras.Model, info: dict) -> None:
    """Write one head folder atomically; nothing else in the model directory is touched."""
    with atomic_path(os.path.join(model_dir, "heads", name), directory=True) as temporary:
        head.save(os.path.join(temporary, "head.keras"))
        write_json(os.path.join(temporary, "head.json"), info)


def load_detector(path: str) -> Detector:
    metadata = read_metadata(path)
    preprocessing = _preprocessing(path, metadata)
    backbone = load_keras_file(os.path.join(path, "backbone.keras"))
    backbone_hash = weights_hash(backbone)
    if backbone_hash != metadata["backbone_sha256"]:
        raise TfdnadetError(f"Model {path}: backbone.keras does not match detector.json (weights hash differs).")
    heads, infos = {}, {}
    for name in head_names(path):
        info = read_head_info(path, name)
        if info.get("backbone_sha256") != backbone_hash:
            raise TfdnadetError(
                f"Head '{name}' in {path} was trained on another backbone (hash {str(info.get('backbone_sha256'))[:12]}, "
                f"this backbone {backbone_hash[:12]}): retrain or re-add it."
            )
        heads[name] = load_keras_file(os.path.join(path, "heads", name, "head.keras"))
        infos[name] = info
    return Detector(backbone, heads, infos, preprocessing, metadata["config"], read_rejection(path, backbone_hash))


def read_rejection(path: str, backbone_hash: str):
    """The model's rejection rule, None when it has none; a rule fitted on another backbone is an error. Its matrices
    come as float32 arrays (from the .npz it names, or inline in a rule written by an earlier release)."""
    if not os.path.isfile(os.path.join(path, REJECTION_FILE)):
        return None
    rule = read_json(os.path.join(path, REJECTION_FILE))
    if rule.get("backbone_sha256") != backbone_hash:
        raise TfdnadetError(f"{REJECTION_FILE} in {path} was calibrated on another backbone: run `tfdnadet calibrate-rejection` again.")
    arrays_file = rule.pop("arrays", None)
    if arrays_file:
        try:
            with np.load(os.path.join(path, arrays_file)) as arrays:
                rule.update({name: arrays[name] for name in arrays.files})
        except (OSError, ValueError):
            raise TfdnadetError(
                f"{os.path.join(path, arrays_file)} (named in {REJECTION_FILE}) is missing or unreadable: "
                "run `tfdnadet calibrate-rejection` again."
            ) from None
    return {key: np.asarray(value, np.float32) if key in REJECTION_ARRAYS else value for key, value in rule.items()}


def write_rejection(path: str, rule: dict) -> None:
    """Replace the model's rule; nothing else in the model directory is touched. The matrices go to an .npz named
    by its content, written before the JSON that names it; the previous one is removed only after, so a write
    stopped halfway leaves the previous rule whole."""
    arrays = {name: np.asarray(rule[name], np.float32) for name in REJECTION_ARRAYS if name in rule}
    record = {key: value for key, value in rule.items() if key not in arrays}
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        record["arrays"] = f"rejection-{hashlib.sha256(buffer.getvalue()).hexdigest()[:16]}.npz"
        with atomic_path(os.path.join(path, record["arrays"])) as temporary, open(temporary, "wb") as f:
            f.write(buffer.getvalue())
    write_json(os.path.join(path, REJECTION_FILE), record)
    for entry in os.listdir(path):
        if entry.startswith("rejection-") and entry.endswith(".npz") and entry != record.get("arrays"):
            os.remove(os.path.join(path, entry))


def _preprocessing(path: str, metadata: dict) -> Preprocessing:
    try:
        return Preprocessing.from_dict(metadata.get("preprocessing") or {})
    except TfdnadetError as error:
        raise TfdnadetError(f"{path}/detector.json: {error}") from None


def head_names(path: str) -> list:
    """Names of the head folders of a model directory (hidden temporary folders left out), sorted."""
    heads_dir = os.path.join(path, "heads")
    return sorted(n for n in os.listdir(heads_dir) if not n.startswith(".")) if os.path.isdir(heads_dir) else []


def read_head_info(path: str, name: str) -> dict:
    return read_json(os.path.join(path, "heads", name, "head.json"))


def write_head_info(path: str, name: str, info: dict) -> None:
    """Replace one head's head.json atomically (e.g. a new threshold); its weights file is not touched."""
    write_json(os.path.join(path, "heads", name, "head.json"), info)


def record_config(path: str, **values) -> None:
    """Add `values` to the config recorded in a model directory's detector.json (atomically)."""
    metadata = read_metadata(path)
    metadata["config"] = {**metadata["config"], **values}
    write_json(os.path.join(path, METADATA_FILE), metadata)


def load_backbone(path: str) -> keras.Model:
    """The backbone of a model directory (for --init from stage 1 or an earlier run)."""
    read_metadata(path)
    return load_keras_file(os.path.join(path, "backbone.keras"))


def write_decoder(model_dir: str, decoder: keras.Model) -> None:
    """Add GFD-Net's G_dec (folder `gfd/`, written atomically; the backbone and heads are not touched)."""
    with atomic_path(os.path.join(model_dir, os.path.dirname(DECODER_FILE)), directory=True) as temporary:
        decoder.save(os.path.join(temporary, os.path.basename(DECODER_FILE)))


def load_decoder(model_dir: str) -> keras.Model:
    """GFD-Net's G_dec of a model directory; a one-line error for a model trained another way."""
    if not os.path.isfile(os.path.join(model_dir, DECODER_FILE)):
        raise TfdnadetError(
            f"{model_dir} has no fingerprint generator ({DECODER_FILE}): only models trained with --method gfd draw fingerprints."
        )
    return load_keras_file(os.path.join(model_dir, DECODER_FILE))


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


def load_keras_file(path: str) -> keras.Model:
    if not os.path.isfile(path):
        raise TfdnadetError(f"Missing model file: {path}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a damaged file raises many kinds of errors
        raise TfdnadetError(f"Cannot load {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
