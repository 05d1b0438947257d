"""The detector: one backbone and named heads, and the one forward pass every tool uses.

`Detector.features` gives named backbone outputs on the grid the model predicts on (its patch grid with
`predict_on: patches`, the whole image otherwise); `Detector.logits` runs the heads on them; `Detector.aggregate`
turns each image's grid of answers into one. predict, evaluate, the report, Grad-CAM, patch agreement and the
SavedModel graph all go through these, so they cannot disagree. The model directory is written and read by
`tfdnadet.models.model_dir`.
"""

import dataclasses
import datetime
import hashlib
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfdnadet.data.preprocess import min_image_side
from tfdnadet.errors import TfdnadetError
from tfdnadet.models import encoder, heads  # noqa: F401  (registers the classes that saved models name)
from tfdnadet.models.encoder import POOL_LAYER

MULTICLASS = "multiclass"
PREDICT_ON = ("whole", "patches")
MEAN_PROBABILITY = "mean_probability"
AGGREGATIONS = (MEAN_PROBABILITY,)  # how an image's answer is made from its patches' answers


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs and answers; saved in detector.json with the model."""

    base_size: int  # [5.1] first resize to the data set's lowest resolution
    input_size: int  # [5.1] then up to the model's input size
    patch_size: int  # training patch size; the grid cell with predict_on: patches
    max_pixels: int  # larger images are refused (decompression bombs)
    predict_on: str = "whole"  # models saved before this field existed predicted on whole images
    aggregation: str = MEAN_PROBABILITY

    def __post_init__(self):
        for name in ("base_size", "input_size", "patch_size", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TfdnadetError(f"preprocessing.{name} must be a positive integer. Received: {name}={value!r}")
        if self.predict_on not in PREDICT_ON:
            raise TfdnadetError(f"preprocessing.predict_on must be one of {PREDICT_ON}. Received: predict_on={self.predict_on!r}")
        if self.aggregation not in AGGREGATIONS:
            raise TfdnadetError(f"preprocessing.aggregation must be one of {AGGREGATIONS}. Received: aggregation={self.aggregation!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        """From detector.json's `preprocessing`; unknown keys are errors, fields added later take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TfdnadetError(f"Unknown preprocessing keys: {', '.join(unknown)}. Known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError:
            missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
            raise TfdnadetError(f"Missing preprocessing keys: {', '.join(missing)}") from None

    @classmethod
    def from_data_config(cls, data) -> "Preprocessing":
        """The preprocessing a model trained with config section `data` (a DataConfig) predicts with."""
        return cls(data.base_size, data.input_size, data.patch_size, data.max_pixels, data.predict_on)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def grid_patch_size(self) -> Optional[int]:
        """The patch size of a model that predicts on its patch grid, else None (it predicts on whole images)."""
        return self.patch_size if self.predict_on == "patches" else None

    @property
    def min_image_side(self) -> int:
        return min_image_side(self.patch_size, self.base_size)


def weights_hash(model: keras.Model) -> str:
    """sha256 of a model's weight values (file bytes change with timestamps, weights do not)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


class Detector:
    """Holds a backbone and named heads; maps preprocessed images to per-head probabilities."""

    def __init__(self, backbone: keras.Model, heads: dict, head_info: dict, preprocessing: Preprocessing, config: dict):
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing. Received: {type(preprocessing).__name__}")
        self.backbone = backbone
        self.heads = dict(heads)
        self.head_info = dict(head_info)
        self.preprocessing = preprocessing
        self.config = dict(config)
        self._compiled = {}
        self._extractors = {}

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
        self._compiled = {}

    def with_heads(self, names) -> "Detector":
        """The same backbone with only the heads `names` (shares every model)."""
        names = list(names)
        return Detector(self.backbone, {n: self.heads[n] for n in names}, {n: self.head_info[n] for n in names}, self.preprocessing, self.config)

    def with_preprocessing(self, **changes) -> "Detector":
        """The same models with some preprocessing fields changed."""
        return Detector(self.backbone, self.heads, self.head_info, dataclasses.replace(self.preprocessing, **changes), self.config)

    def float32(self) -> "Detector":
        """The detector with every model rebuilt in float32 (weights copied) where it was built in mixed precision."""
        heads = {name: float32_copy(head) for name, head in self.heads.items()}
        return Detector(float32_copy(self.backbone), heads, self.head_info, self.preprocessing, self.config)

    def input_layer(self, name: str) -> str:
        """The backbone layer whose output head `name` reads: pooled features, or a block's feature map."""
        return self.head_info[name].get("input_layer", POOL_LAYER)

    # --- the forward pass ---

    def grid(self, images) -> tuple:
        """float32 [B, S, S, 3] -> (what the backbone sees [B * n, ...], n): the patch grid, or the images (n = 1)."""
        patch_size = self.preprocessing.grid_patch_size
        return (images, 1) if patch_size is None else patch_grid(images, patch_size)

    def features(self, images, layers) -> "GridFeatures":
        """The named backbone outputs of each image's grid cells, in one backbone pass."""
        inputs, count = self.grid(images)
        return GridFeatures(self._extractor(layers)(inputs, training=False), count)

    def logits(self, features: "GridFeatures") -> dict:
        """{head name: float32 logits [B, n, K]} from features holding every head's input layer."""
        outputs = {}
        for name, head in self.heads.items():
            logits = tf.cast(head(features.maps[self.input_layer(name)], training=False), tf.float32)
            outputs[name] = _by_image(logits, features.count)
        return outputs

    def aggregate(self, logits: dict) -> dict:
        """{head name: float32 probabilities [B, K]}: each image's grid of answers made one (preprocessing.aggregation)."""
        return {name: tf.reduce_mean(self.activation(name, value), axis=1) for name, value in logits.items()}

    def activation(self, name: str, logits):
        """Logits of head `name` -> probabilities: softmax for the multiclass head, sigmoid for one-logit heads."""
        return tf.nn.softmax(logits) if self.heads[name].kind == MULTICLASS else tf.sigmoid(logits)

    def head_layers(self) -> set:
        return {POOL_LAYER, *map(self.input_layer, self.heads)}

    def forward(self, images, layers=()) -> tuple:
        """Tensor ops (the SavedModel export traces them) -> ({head: probabilities [B, K]}, {layer: [B, n, ...]})."""
        features = self.features(images, self.head_layers() | set(layers))
        return self.aggregate(self.logits(features)), {name: features.by_image(name) for name in layers}

    def probabilities(self, images) -> dict:
        """{head name: float32 probabilities [B, K]} in tensor ops."""
        return self.forward(images)[0]

    def predict(self, images) -> dict:
        """float32 [B, S, S, 3] in [-1, 1] -> {head name: float32 probabilities [B, K]} (numpy)."""
        return self.predict_with_features(images, ())[0]

    def predict_with_features(self, images, layers) -> tuple:
        """`predict`, plus {layer: [B, n, ...]} of the named backbone layers from the same pass (numpy)."""
        key = tuple(sorted(layers))
        if key not in self._compiled:
            self._compiled[key] = tf.function(lambda x: self.forward(x, key), reduce_retracing=True)
        probabilities, features = self._compiled[key](tf.convert_to_tensor(images, tf.float32))
        return {n: v.numpy() for n, v in probabilities.items()}, {n: v.numpy() for n, v in features.items()}

    def _extractor(self, layers) -> keras.Model:
        key = tuple(sorted(layers))
        if key not in self._extractors:
            self._extractors[key] = feature_extractor(self.backbone, key)
        return self._extractors[key]


@dataclass
class GridFeatures:
    """Backbone outputs on a model's grid: maps[layer] is [B * n, ...], the n cells of each image in a row."""

    maps: dict
    count: object  # n, an int or a scalar tensor

    def by_image(self, layer: str):
        """[B, n, ...]: the map of `layer`, grouped by image."""
        return _by_image(self.maps[layer], self.count)


def _by_image(value, count):
    """[B * n, ...] -> [B, n, ...]."""
    return tf.reshape(value, tf.concat([[-1, count], tf.shape(value)[1:]], 0))


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


def float32_copy(model: keras.Model) -> keras.Model:
    """`model`, or where any layer computes in another dtype (mixed precision) a float32 twin with its weights."""
    if all(layer.compute_dtype == "float32" for layer in [model, *model.layers]):
        return model
    copy = type(model).from_config({**model.get_config(), "dtype": "float32"})
    copy.set_weights(model.get_weights())
    return copy
