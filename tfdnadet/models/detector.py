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
from tfdnadet.precision import AUTO, resolve_precision

MULTICLASS = "multiclass"
FLOAT32 = "float32"
PREDICT_ON = ("whole", "patches")
MEAN_PROBABILITY = "mean_probability"  # the mean of the cells' probabilities
MEAN_LOGIT = "mean_logit"  # the probability of the cells' mean logits
VOTE = "vote"  # the share of cells that pick each class (a one-logit head: that score >= 0.5)
AGGREGATIONS = (MEAN_PROBABILITY, MEAN_LOGIT, VOTE)  # how an image's answer is made from its grid cells' answers


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs and answers; saved in detector.json with the model."""

    base_size: int  # [5.1] first resize to the data set's lowest resolution
    input_size: int  # [5.1] then up to the model's input size
    patch_size: int  # training patch size; the grid cell with predict_on: patches
    max_pixels: int  # larger images are refused (decompression bombs)
    predict_on: str = "whole"  # models saved before this field existed predicted on whole images
    aggregation: str = MEAN_PROBABILITY
    grid_stride: Optional[int] = None  # step between grid cells; None: the patch size (cells do not overlap)
    grid_scales: tuple = (1.0,)  # the input image resized by each factor, a grid cut from each (multi-scale)

    def __post_init__(self):
        object.__setattr__(self, "grid_scales", tuple(self.grid_scales))  # detector.json holds a list
        for name in ("base_size", "input_size", "patch_size", "max_pixels", "grid_stride"):
            value = getattr(self, name)
            if (value is not None or name != "grid_stride") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TfdnadetError(f"preprocessing.{name} must be a positive integer. Received: {name}={value!r}")
        if self.predict_on not in PREDICT_ON:
            raise TfdnadetError(f"preprocessing.predict_on must be one of {PREDICT_ON}. Received: predict_on={self.predict_on!r}")
        if self.aggregation not in AGGREGATIONS:
            raise TfdnadetError(f"preprocessing.aggregation must be one of {AGGREGATIONS}. Received: aggregation={self.aggregation!r}")
        if not self.grid_scales or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in self.grid_scales):
            raise TfdnadetError(f"preprocessing.grid_scales must be positive numbers. Received: grid_scales={list(self.grid_scales)}")
        if min(scaled_size(self.input_size, scale) for scale in self.grid_scales) < self.patch_size:
            raise TfdnadetError(
                f"preprocessing.grid_scales must keep the {self.input_size} px input at least one {self.patch_size} px patch wide. "
                f"Received: grid_scales={list(self.grid_scales)}"
            )

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
        return cls(
            data.base_size, data.input_size, data.patch_size, data.max_pixels, data.predict_on, data.aggregation, data.grid_stride, data.grid_scales
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def grid_patch_size(self) -> Optional[int]:
        """The patch size of a model that predicts on its patch grid, else None (it predicts on whole images)."""
        return self.patch_size if self.predict_on == "patches" else None

    @property
    def stride(self) -> int:
        return self.grid_stride or self.patch_size

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

    def __init__(
        self, backbone: keras.Model, heads: dict, head_info: dict, preprocessing: Preprocessing, config: dict, rejection: Optional[dict] = None
    ):
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing. Received: {type(preprocessing).__name__}")
        self.backbone = backbone
        self.heads = dict(heads)
        self.head_info = dict(head_info)
        self.preprocessing = preprocessing
        self.config = dict(config)
        self.rejection = rejection  # the open-set rule of rejection.json (tfdnadet.rejection), or None
        self._compiled = {}
        self._extractors = {}
        self._inference = None  # `for_inference()`, made on the first predict

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
        self._inference = None

    def with_heads(self, names) -> "Detector":
        """The same backbone with only the heads `names` (shares every model)."""
        names = list(names)
        return Detector(self.backbone, {n: self.heads[n] for n in names}, {n: self.head_info[n] for n in names}, self.preprocessing, self.config, self.rejection)

    def with_preprocessing(self, **changes) -> "Detector":
        """The same models with some preprocessing fields changed."""
        return Detector(self.backbone, self.heads, self.head_info, dataclasses.replace(self.preprocessing, **changes), self.config, self.rejection)

    @property
    def precision(self) -> str:
        """The Keras dtype policy the models compute in: "float32", or the mixed policy they were built in."""
        policies = {model_precision(model) for model in (self.backbone, *self.heads.values())} - {FLOAT32}
        return policies.pop() if policies else FLOAT32

    def in_precision(self, policy: str) -> "Detector":
        """The detector with every model rebuilt to compute in dtype policy `policy` (weights copied; models already
        in it are shared). Inputs, logits and probabilities stay float32 in every policy."""
        heads = {name: precision_copy(head, policy) for name, head in self.heads.items()}
        return Detector(precision_copy(self.backbone, policy), heads, self.head_info, self.preprocessing, self.config, self.rejection)

    def float32(self) -> "Detector":
        return self.in_precision(FLOAT32)

    def for_inference(self, precision: str = AUTO) -> "Detector":
        """The detector that predict, evaluate and the export run. "auto": the model's own precision where it is the
        one this machine computes fastest (`resolve_precision("auto")`: mixed_bfloat16 where the CPU or GPU has
        native bfloat16), else float32 (emulated bfloat16 and float16 on a CPU are slower than float32).
        Any other value is a dtype policy to compute in."""
        if precision == AUTO:
            precision = self.precision if self.precision == resolve_precision(AUTO) else FLOAT32
        return self if precision == self.precision else self.in_precision(precision)

    def copy_weights_from(self, source: "Detector") -> None:
        """Give each model the weights of `source`'s model in the same place (a twin in another precision follows it)."""
        pairs = [(self.backbone, source.backbone), *((self.heads[name], source.heads[name]) for name in self.heads)]
        for twin, model in pairs:
            if twin is not model:
                twin.set_weights(model.get_weights())

    def input_layer(self, name: str) -> str:
        """The backbone layer whose output head `name` reads: pooled features, or a block's feature map."""
        return self.head_info[name].get("input_layer", POOL_LAYER)

    # --- the forward pass ---

    def grid(self, images) -> tuple:
        """float32 [B, S, S, 3] -> (what the backbone sees [B * n, ...], n): the patch grid, or the images (n = 1)."""
        p = self.preprocessing
        return (images, 1) if p.grid_patch_size is None else patch_grid(images, p.patch_size, p.stride, p.grid_scales)

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
        return {name: self._aggregate_head(name, value) for name, value in logits.items()}

    def _aggregate_head(self, name: str, logits):
        rule = self.preprocessing.aggregation
        if rule == MEAN_LOGIT:
            return self.activation(name, tf.reduce_mean(logits, axis=1))
        if rule == VOTE:
            if self.heads[name].kind == MULTICLASS:
                picks = tf.one_hot(tf.argmax(logits, axis=-1), tf.shape(logits)[-1], dtype=tf.float32)
            else:
                picks = tf.cast(logits >= 0.0, tf.float32)  # sigmoid >= 0.5
            return tf.reduce_mean(picks, axis=1)
        return tf.reduce_mean(self.activation(name, logits), axis=1)

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
        """float32 [B, S, S, 3] in [-1, 1] -> {head name: float32 probabilities [B, K]} (numpy), computed in the
        precision of `for_inference()`."""
        return self.predict_with_features(images, ())[0]

    def predict_with_features(self, images, layers) -> tuple:
        """`predict`, plus {layer: [B, n, ...]} of the named backbone layers from the same pass (numpy)."""
        key = tuple(sorted(layers))
        if self._inference is None:
            self._inference = self.for_inference()
        if self._inference is not self:
            self._inference.copy_weights_from(self)  # the twin follows this detector (e.g. while a head trains)
        if key not in self._compiled:
            runner = self._inference
            # Any batch and image size in one trace: each detector traces once (an ensemble's runs make several).
            # No autograph: the forward pass has no tensor-dependent Python control flow, and converting its layers
            # took 4 of a one-image predict's 20 s on a 2-core CPU.
            images_spec = tf.TensorSpec([None, None, None, 3], tf.float32)
            self._compiled[key] = tf.function(lambda x: runner.forward(x, key), input_signature=[images_spec], autograph=False)
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


def scaled_size(size, scale: float):
    """The side of a `size` image resized by `scale` (a Python int, or a tensor for a tensor size)."""
    if isinstance(size, int):
        return max(1, int(round(size * scale)))
    return tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32))


def scaled_images(images, scale: float):
    """[B, H, W, C] resized by `scale` (antialiased bilinear, as the resize chain), or unchanged at scale 1."""
    if scale == 1:
        return images
    shape = tf.shape(images)
    return tf.image.resize(images, [scaled_size(shape[1], scale), scaled_size(shape[2], scale)], method="bilinear", antialias=True)


def _cut(images, patch_size: int, stride: int):
    """[B, H, W, C] -> [B, rows, columns, P * P * C]: the P x P cells every `stride` pixels (a remainder is cut off)."""
    return tf.image.extract_patches(images, [1, patch_size, patch_size, 1], [1, stride, stride, 1], [1, 1, 1, 1], "VALID")


def patch_grid(images, patch_size: int, stride: Optional[int] = None, scales=(1.0,)) -> tuple:
    """[B, S, S, C] -> ([B * n, P, P, C] cells, n): for each scale in turn, the image resized by it, then its P x P
    cells every `stride` pixels (default P: no overlap) in row order; a remainder is cut off."""
    stride = stride or patch_size
    channels = tf.shape(images)[3]
    cells = [tf.reshape(_cut(scaled_images(images, s), patch_size, stride), [tf.shape(images)[0], -1, patch_size, patch_size, channels]) for s in scales]
    cells = tf.concat(cells, axis=1)
    return tf.reshape(cells, [-1, patch_size, patch_size, channels]), tf.shape(cells)[1]


def untile(maps, image_shape, patch_size: int, stride: Optional[int] = None, scales=(1.0,)) -> tf.Tensor:
    """The inverse of `patch_grid` for maps: [B * n, P, P] -> [B, H, W], each pixel the mean of the cells that
    cover it (over every scale, brought back to H x W); pixels no cell covers are 0."""
    stride = stride or patch_size
    height, width = image_shape[1], image_shape[2]
    maps = tf.reshape(maps, [image_shape[0], -1, patch_size * patch_size])
    total = covered = 0.0
    start = 0
    for scale in scales:
        size = [scaled_size(height, scale), scaled_size(width, scale)]
        # extract_patches is linear, so its gradient (adjoint) adds every cell back where it was cut.
        canvas = tf.zeros([image_shape[0], size[0], size[1], 1])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(canvas)
            cut = _cut(canvas, patch_size, stride)
        count = tf.shape(cut)[1] * tf.shape(cut)[2]
        cells = tf.reshape(maps[:, start : start + count], tf.shape(cut))
        summed, coverage = (tape.gradient(cut, canvas, output_gradients=v) for v in (cells, tf.ones_like(cells)))
        start += count
        mean = tf.math.divide_no_nan(summed, coverage)
        total += tf.image.resize(mean * tf.cast(coverage > 0, tf.float32), [height, width], method="bilinear")
        covered += tf.image.resize(tf.cast(coverage > 0, tf.float32), [height, width], method="bilinear")
    return tf.math.divide_no_nan(total, covered)[..., 0]


def feature_extractor(backbone: keras.Model, layer_names) -> keras.Model:
    """One pass of the backbone returning {layer name: output} for the named layers (shares its weights)."""
    return keras.Model(backbone.inputs[0], {name: backbone.get_layer(name).output for name in sorted(layer_names)})


def model_precision(model: keras.Model) -> str:
    """The dtype policy of `model`'s layers that do not compute in float32 (mixed precision), else "float32"."""
    for layer in [model, *model.layers]:
        if layer.compute_dtype != FLOAT32:
            return layer.dtype_policy.name
    return FLOAT32


def precision_copy(model: keras.Model, policy: str) -> keras.Model:
    """`model` where it computes in dtype policy `policy` or has no dtype setting (always float32, e.g. a
    multiclass head), else a twin built in `policy` with its weights."""
    config = model.get_config()
    if model_precision(model) == policy or "dtype" not in config:
        return model
    copy = type(model).from_config({**config, "dtype": policy})
    copy.set_weights(model.get_weights())
    return copy
