"""Where a model directory is and what its detector.json says, read without TensorFlow: the CLI refuses a wrong
model path at once instead of after importing it (tfdnadet.models.model_dir reads and writes the rest)."""

import json
import os

from tfdnadet.errors import TfdnadetError

FORMAT = "tfdnadet-detector"
FORMAT_VERSION = 1
MODEL_ENV = "TFDNADET_MODEL"
DEFAULT_MODEL_DIR = "model"
METADATA_FILE = "detector.json"


def default_model_dir() -> str:
    """$TFDNADET_MODEL, else ./model."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL_DIR


def is_model_dir(path: str) -> bool:
    """Whether `path` holds a model directory (written atomically, so one that exists is complete)."""
    return os.path.isfile(os.path.join(path, METADATA_FILE))


def read_metadata(path: str) -> dict:
    """A model directory's detector.json; a clear error when `path` is none."""
    if not os.path.isdir(path):
        raise TfdnadetError(f"Model directory not found: {path}")
    if not is_model_dir(path):
        raise TfdnadetError(f"{path} is not a tfdnadet model directory (no {METADATA_FILE}; a training run keeps its model in RUN/model).")
    metadata = read_json(os.path.join(path, METADATA_FILE))
    if metadata.get("format") != FORMAT:
        raise TfdnadetError(f"{path} is not a tfdnadet model directory ({METADATA_FILE} has no format '{FORMAT}').")
    return metadata


def read_json(path: str) -> dict:
    """A JSON file of a model directory; missing or invalid: a clear error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TfdnadetError(f"Missing file: {path}") from None
    except json.JSONDecodeError as exc:
        raise TfdnadetError(f"{path} is not valid JSON: {exc}") from None
