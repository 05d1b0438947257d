"""The detector: one backbone and a registry of named heads, saved together as one model directory.

Layout of a model directory:
    detector.json              class names, preprocessing sizes, config, backbone weight hash
    backbone.keras             the encoder
    heads/<name>/head.keras    one folder per head, written on its own
    heads/<name>/head.json     kind, classes, threshold, hash of the backbone it was trained on
"""

import datetime
import hashlib
import json
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfdnadet.atomic import atomic_path, write_json
from tfdnadet.errors import TfdnadetError
from tfdnadet.models import encoder, heads  # noqa: F401  (registers the classes that saved models name)
from tfdnadet.models.encoder import POOL_LAYER

FORMAT = "tfdnadet-detector"
FORMAT_VERSION = 1
MULTICLASS = "multiclass"


def weights_hash(model: keras.Model) -> str:
    """sha256 of a model's weight values (file bytes change with timestamps, weights do not)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


class Detector:
    """Holds a backbone and named heads; maps preprocessed images to per-head probabilities."""

    def __init__(self, backbone: keras.Model, heads: dict, head_info: dict, preprocessing: dict, config: dict):
        self.backbone = backbone
        self.heads = dict(heads)
        self.head_info = dict(head_info)
        self.preprocessing = dict(preprocessing)
        self.config = dict(config)
        self._forward = None
        self._extractor = None

    @property
    def class_names(self) -> list:
        if MULTICLASS not in self.head_info:
            raise TfdnadetError("This model has no multiclass head.")
        return list(self.head_info[MULTICLASS]["class_names"])

    def add_head(self, name: str, head: keras.Model, info: dict) -> None:
        info = {"name": name, "kind": head.kind, "backbone_sha256": weights_hash(self.backbone), **info}
        info.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        self.heads[name] = head
        self.head_info[name] = info
        self._forward = self._extractor = None

    def predict(self, images) -> dict:
        """float32 [B, S, S, 3] in [-1, 1] -> {head name: float32 probabilities (numpy)}."""
        if self._forward is None:
            self._forward = tf.function(self.probabilities, reduce_retracing=True)
        return {name: value.numpy() for name, value in self._forward(tf.convert_to_tensor(images, tf.float32)).items()}

    def input_layer(self, name: str) -> str:
        """The backbone layer whose output head `name` reads: pooled features, or a block's feature map."""
        return self.head_info[name].get("input_layer", POOL_LAYER)

    def probabilities(self, images) -> dict:
        """The forward pass in tensor ops (the SavedModel export traces it): {head name: float32 probabilities}.

        With preprocessing `predict_on: patches` each image's answer is the mean over its grid of patches.
        """
        patch_size = prediction_patch_size(self.preprocessing)
        if patch_size is None:
            return self._head_probabilities(images)
        patches, count = patch_grid(images, patch_size)
        outputs = self._head_probabilities(patches)
        return {name: tf.reduce_mean(tf.reshape(value, tf.concat([[-1, count], tf.shape(value)[1:]], 0)), axis=1) for name, value in outputs.items()}

    def _head_probabilities(self, images) -> dict:
        if self._extractor is None:
            self._extractor = feature_extractor(self.backbone, {POOL_LAYER, *map(self.input_layer, self.heads)})
        inputs = self._extractor(images, training=False)
        outputs = {}
        for name, head in self.heads.items():
            logits = tf.cast(head(inputs[self.input_layer(name)], training=False), tf.float32)
            outputs[name] = tf.nn.softmax(logits) if head.kind == MULTICLASS else tf.sigmoid(logits)
        return outputs


def prediction_patch_size(preprocessing: dict) -> Optional[int]:
    """The patch size of a model that predicts on its patch grid (`predict_on: patches`), else None."""
    return preprocessing["patch_size"] if preprocessing.get("predict_on", "whole") == "patches" else None


def patch_grid(images, patch_size: int) -> tuple:
    """[B, S, S, C] -> ([B * n, P, P, C] non-overlapping patches in row order, n = (S // P)^2); a remainder is cut off."""
    shape = tf.shape(images)
    side = shape[1] // patch_size
    grid = images[:, : side * patch_size, : side * patch_size, :]
    grid = tf.reshape(grid, [shape[0], side, patch_size, side, patch_size, shape[3]])
    grid = tf.transpose(grid, [0, 1, 3, 2, 4, 5])
    return tf.reshape(grid, [-1, patch_size, patch_size, shape[3]]), side * side


def untile(patches, side) -> tf.Tensor:
    """The inverse of `patch_grid` for maps: [B * side^2, h, w] -> [B, side * h, side * w]."""
    shape = tf.shape(patches)
    grid = tf.reshape(patches, [-1, side, side, shape[1], shape[2]])
    grid = tf.transpose(grid, [0, 1, 3, 2, 4])
    return tf.reshape(grid, [-1, side * shape[1], side * shape[2]])


def feature_extractor(backbone: keras.Model, layer_names) -> keras.Model:
    """One pass of the backbone returning {layer name: output} for the named layers (shares its weights)."""
    return keras.Model(backbone.inputs[0], {name: backbone.get_layer(name).output for name in sorted(layer_names)})


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
            "preprocessing": detector.preprocessing,
            "config": detector.config,
        }
        write_json(os.path.join(temporary, "detector.json"), metadata)


def write_head(model_dir: str, name: str, head: keras.Model, info: dict) -> None:
    """Write one head folder atomically; nothing else in the model directory is touched."""
    with atomic_path(os.path.join(model_dir, "heads", name), directory=True) as temporary:
        head.save(os.path.join(temporary, "head.keras"))
        write_json(os.path.join(temporary, "head.json"), info)


def load_detector(path: str) -> Detector:
    metadata = read_metadata(path)
    backbone = _load_keras(os.path.join(path, "backbone.keras"))
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
        heads[name] = _load_keras(os.path.join(path, "heads", name, "head.keras"))
        infos[name] = info
    return Detector(backbone, heads, infos, metadata["preprocessing"], metadata["config"])


def head_names(path: str) -> list:
    """Names of the head folders of a model directory (hidden temporary folders left out), sorted."""
    heads_dir = os.path.join(path, "heads")
    return sorted(n for n in os.listdir(heads_dir) if not n.startswith(".")) if os.path.isdir(heads_dir) else []


def read_head_info(path: str, name: str) -> dict:
    return _read_json(os.path.join(path, "heads", name, "head.json"))


def write_head_info(path: str, name: str, info: dict) -> None:
    """Replace one head's head.json atomically (e.g. a new threshold); its weights file is not touched."""
    write_json(os.path.join(path, "heads", name, "head.json"), info)


def read_metadata(path: str) -> dict:
    if not os.path.isdir(path):
        raise TfdnadetError(f"Model directory not found: {path}")
    metadata = _read_json(os.path.join(path, "detector.json"))
    if metadata.get("format") != FORMAT:
        raise TfdnadetError(f"{path} is not a tfdnadet model directory (detector.json has no format '{FORMAT}').")
    return metadata


def load_backbone(path: str) -> keras.Model:
    """The backbone of a model directory (for --init from stage 1 or an earlier run)."""
    read_metadata(path)
    return _load_keras(os.path.join(path, "backbone.keras"))


def _load_keras(path: str) -> keras.Model:
    if not os.path.isfile(path):
        raise TfdnadetError(f"Missing model file: {path}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a damaged file raises many kinds of errors
        raise TfdnadetError(f"Cannot load {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TfdnadetError(f"Missing file: {path}") from None
    except json.JSONDecodeError as exc:
        raise TfdnadetError(f"{path} is not valid JSON: {exc}") from None
