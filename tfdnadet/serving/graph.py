"""The serving graph: the detector in its inference precision (`Detector.for_inference`: bfloat16 compute where
the machine has it natively, else float32) in a tf.Module whose signatures decode image bytes in-graph.

Signatures (all outputs float32, int64, int32 or string, which TF Serving's REST encoder can return):
    serving_default   images_bytes: string [B] (JPEG, PNG, GIF, BMP, WebP) -> every head's outputs + verdict
    predict_images    images: float32 [B, S, S, 3] in [-1, 1], already preprocessed -> the same outputs
    head_<name>       images_bytes: string [B] -> that head's outputs only
Per head: multiclass -> <name>_probabilities [B, C], <name>_class_index [B], <name>_class_name [B];
binary -> <name>_score [B] (sigmoid), <name>_decision [B] (1 when score >= the head's threshold).
Every signature also returns `valid` [B] (int32): 0 for an image that could not be used (not decodable,
smaller than a patch, more than max_pixels pixels); its outputs are then 0, class index -1, names "".
With a rejection rule (tfdnadet.rejection): knownness [B], the rejection score. `verdict` [B] (string) comes with
binary heads or a rejection rule: the rule of tfdnadet.verdict (an invalid image: knownness 0, verdict "").
"""

import functools

import tensorflow as tf

from tfdnadet.data.preprocess import resize_to_base, to_model_input
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.heads import BinaryHead
from tfdnadet.precision import AUTO
from tfdnadet.rejection import knownness, rejection_layers
from tfdnadet.verdict import KNOWNNESS, MULTIPLE, REAL, UNKNOWN, binary_heads, newcomer_heads, rejection_threshold, threshold_of

BYTES_INPUT = "images_bytes"
IMAGES_INPUT = "images"
DEFAULT_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
HEAD_SIGNATURE_PREFIX = "head_"
VERDICT = "verdict"
VALID = "valid"
INVALID_CLASS_INDEX = -1


class DetectorServing(tf.Module):
    """Holds the detector in precision `precision` (see `Detector.for_inference`); `signatures()` gives the
    concrete functions to save. Inputs and outputs are float32 whatever it computes in."""

    def __init__(self, detector: Detector, precision: str = AUTO):
        super().__init__(name="tfdnadet_serving")
        for name, head in detector.heads.items():
            if head.kind not in (MULTICLASS, BinaryHead.kind):
                raise TfdnadetError(f"Head {name!r} has kind {head.kind!r}; the export knows {MULTICLASS!r} and {BinaryHead.kind!r}.")
        self._detector = detector.for_inference(precision)
        self.precision = self._detector.precision
        self.models = [self._detector.backbone, *self._detector.heads.values()]  # tracked: their variables are saved
        preprocessing = detector.preprocessing
        self.base_size, self.input_size = preprocessing.base_size, preprocessing.input_size
        self.max_pixels = preprocessing.max_pixels
        self.min_size = preprocessing.min_image_side  # the Python path refuses images smaller than a patch too

    def signatures(self) -> dict:
        bytes_spec = tf.TensorSpec([None], tf.string, name=BYTES_INPUT)
        images_spec = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32, name=IMAGES_INPUT)
        signatures = {
            DEFAULT_SIGNATURE: tf.function(self.serve_bytes).get_concrete_function(bytes_spec),
            IMAGES_SIGNATURE: tf.function(self.serve_images).get_concrete_function(images_spec),
        }
        for name in self._detector.heads:
            serve_head = tf.function(functools.partial(self.serve_head, name))
            signatures[HEAD_SIGNATURE_PREFIX + name] = serve_head.get_concrete_function(bytes_spec)
        return signatures

    def serve_bytes(self, images_bytes):
        images, valid = self.decode(images_bytes)
        return self._serve(self._detector, images, valid)

    def serve_images(self, images):
        return self._serve(self._detector, images, tf.ones([tf.shape(images)[0]], tf.int32))

    def serve_head(self, name: str, images_bytes):
        images, valid = self.decode(images_bytes)
        return self._serve(self._detector.with_heads([name]), images, valid)

    def decode(self, images_bytes):
        """Encoded images -> (float32 model input, valid int32 [B]); an unusable image is a gray image, valid 0.

        The graph has no try/except: a tf.data pipeline decodes each image and `ignore_errors` drops the ones
        whose decode (or size check) fails, so one bad image cannot fail the request for the others.
        """
        count = tf.shape(images_bytes, out_type=tf.int64)[0]
        base_shape = [self.base_size, self.base_size, 3]
        indexed = tf.data.Dataset.from_tensor_slices((tf.range(count), images_bytes))
        decoded = indexed.map(lambda index, data: (index, self._decode_one(data))).ignore_errors()
        # A last row that always decodes, so the single batch exists even when every image is bad.
        sentinel = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.zeros(base_shape, tf.uint8)))
        indices, images = decoded.concatenate(sentinel).batch(count + 1).get_single_element()
        indices, images = indices[:-1, None], images[:-1]
        gray = tf.fill([count, *base_shape], tf.constant(128, tf.uint8))
        base_images = tf.tensor_scatter_nd_update(gray, indices, images)
        valid = tf.scatter_nd(indices, tf.ones([tf.shape(indices)[0]], tf.int32), [count])
        return to_model_input(base_images, self.input_size), valid

    def _decode_one(self, data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        size = tf.shape(image)[:2]
        checks = [
            tf.debugging.Assert(tf.reduce_min(size) >= self.min_size, ["image smaller than a patch"]),
            tf.debugging.Assert(tf.reduce_prod(tf.cast(size, tf.int64)) <= self.max_pixels, ["image over max_pixels"]),
        ]
        with tf.control_dependencies(checks):
            return resize_to_base(image, self.base_size)

    def _serve(self, detector: Detector, images, valid) -> dict:
        whole = detector is self._detector  # a head signature has that head's outputs only
        rejecting = whole and bool(detector.rejection)
        # The detector's own forward pass: the backbone runs once for all heads and the rejection score.
        probabilities, features = detector.forward(images, rejection_layers(detector) if rejecting else ())
        outputs = {}
        for name, values in probabilities.items():
            outputs.update(self._head_outputs(name, values))
        if rejecting:
            outputs[KNOWNNESS] = knownness(detector, probabilities, features)
        if whole and (binary_heads(detector) or rejecting):
            outputs[VERDICT] = self._verdict(outputs)
        is_valid = tf.cast(valid, tf.bool)
        outputs = {key: _where_valid(is_valid, value, key) for key, value in outputs.items()}
        outputs[VALID] = valid
        return outputs

    def _head_outputs(self, name: str, probabilities) -> dict:
        info = self._detector.head_info[name]
        if self._detector.heads[name].kind == MULTICLASS:
            index = tf.argmax(probabilities, axis=-1)
            return {
                f"{name}_probabilities": probabilities,
                f"{name}_class_index": index,
                f"{name}_class_name": tf.gather(tf.constant(info["class_names"]), index),
            }
        score = tf.reshape(probabilities, [-1])
        decision = score >= tf.constant(threshold_of(self._detector, name), tf.float32)
        return {f"{name}_score": score, f"{name}_decision": tf.cast(decision, tf.int32)}

    def _verdict(self, outputs: dict):
        """The rule of `tfdnadet.verdict.verdicts` in graph ops: real / one architecture / multiple / unknown-generator."""
        d = self._detector
        architectures = [name for name in binary_heads(d) if name != REAL]
        reference = outputs[KNOWNNESS] if KNOWNNESS in outputs else outputs[f"{binary_heads(d)[0]}_score"]
        accepted = reference >= rejection_threshold(d) if d.rejection else tf.ones_like(reference, tf.bool)
        positive = {name: tf.equal(outputs[f"{name}_decision"], 1) for name in architectures}
        no = tf.zeros_like(accepted)
        count = tf.add_n([tf.cast(p, tf.int32) for p in positive.values()] + [tf.zeros_like(reference, tf.int32)])
        first = tf.gather(tf.constant(architectures or [UNKNOWN]), tf.argmax(tf.cast(tf.stack([*positive.values(), no], axis=1), tf.int32), axis=1))
        if MULTICLASS in d.heads:
            name = outputs[f"{MULTICLASS}_class_name"]
            overruled = _any([positive[n] for n in newcomer_heads(d)] + [positive[n] & tf.equal(name, n) for n in architectures], no)
            joins = accepted & ~tf.equal(name, REAL) & ~overruled
            count += tf.cast(joins, tf.int32)
            first = tf.where(joins, name, first)
            judged_real = tf.equal(name, REAL)
        elif REAL in d.heads:
            judged_real = tf.equal(outputs[f"{REAL}_decision"], 1)
        else:
            judged_real = None  # no real/fake judge: no answer reads as real
        label = tf.where(count > 1, MULTIPLE, tf.where(count == 1, first, REAL if judged_real is None else UNKNOWN))
        return label if judged_real is None else tf.where(judged_real & accepted, REAL, label)

    def warmup_requests(self) -> dict:
        """One small request per signature: {signature: {input name: batch of one}} (a gray-ramp PNG)."""
        ramp = tf.cast(tf.linspace(0.0, 255.0, self.input_size), tf.uint8)
        image = tf.stack([tf.tile(ramp[None, :], [self.input_size, 1])] * 3, axis=-1)
        encoded = tf.io.encode_png(image).numpy()
        preprocessed = to_model_input(resize_to_base(image, self.base_size), self.input_size)[None].numpy()
        requests = {DEFAULT_SIGNATURE: {BYTES_INPUT: [encoded]}, IMAGES_SIGNATURE: {IMAGES_INPUT: preprocessed}}
        for name in self._detector.heads:
            requests[HEAD_SIGNATURE_PREFIX + name] = {BYTES_INPUT: [encoded]}
        return requests


def _where_valid(is_valid, value, key: str):
    """`value` for valid rows; for the others 0, "" or (class indices) -1."""
    if value.dtype == tf.string:
        fill = tf.constant("")
    elif key.endswith("_class_index"):
        fill = tf.constant(INVALID_CLASS_INDEX, value.dtype)
    else:
        fill = tf.zeros([], value.dtype)
    mask = tf.reshape(is_valid, [-1] + [1] * (value.shape.rank - 1))
    return tf.where(mask, value, fill)


def _any(conditions: list, default):
    """Elementwise OR of boolean tensors; `default` for none."""
    result = default
    for condition in conditions:
        result = result | condition
    return result
