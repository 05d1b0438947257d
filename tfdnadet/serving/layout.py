"""TF Serving's model base: BASE/NAME/VERSION/ folders, and BASE/models.config listing every model."""

import os
import re

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfdnadet.atomic import atomic_path
from tfdnadet.errors import TfdnadetError

MODELS_CONFIG = "models.config"
SAVED_MODEL_FILE = "saved_model.pb"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it becomes part of the REST path /v1/models/NAME


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name or ""):
        raise TfdnadetError(f"Invalid model name {name!r}: use letters, digits, '_', '.' and '-' (it is part of the serving URL).")


def versions(model_base: str) -> list:
    """The integer version folders under BASE/NAME (TF Serving ignores every other name), ascending."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(entry) for entry in os.listdir(model_base) if entry.isdigit())


def next_version(model_base: str) -> int:
    return max(versions(model_base), default=0) + 1


def export_dir(path: str) -> str:
    """A version folder itself, or the newest version of a model folder (what TF Serving would serve)."""
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    found = versions(path)
    if not found:
        raise TfdnadetError(f"No SavedModel at {path}: expected {SAVED_MODEL_FILE} or integer version folders holding one.")
    return os.path.join(path, str(found[-1]))


def model_names(base: str) -> list:
    """Folders under BASE that hold at least one version with a SavedModel."""
    if not os.path.isdir(base):
        return []
    return sorted(
        name
        for name in os.listdir(base)
        if MODEL_NAME.fullmatch(name)
        and any(os.path.isfile(os.path.join(base, name, str(v), SAVED_MODEL_FILE)) for v in versions(os.path.join(base, name)))
    )


def write_models_config(base: str, server_base: str) -> str:
    """Rewrite BASE/models.config (TF Serving's text format) to list every model; base paths as the server sees them."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()  # an empty list is still a valid file
    for name in model_names(base):
        config.model_config_list.config.add(name=name, base_path=f"{server_base.rstrip('/')}/{name}", model_platform="tensorflow")
    path = os.path.join(base, MODELS_CONFIG)
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
    return path
