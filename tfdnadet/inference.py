"""Attributing images: full (resized) images through the backbone and every head [5.1]."""

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from tfdnadet.data.pipeline import LoadedImages, decode_images, load_images, make_image_dataset
from tfdnadet.data.preprocess import to_model_input
from tfdnadet.data.sources import ImageList, list_image_files
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.rejection import check_score, knownness, rejection_layers
from tfdnadet.verdict import KNOWNNESS, verdicts


@dataclass
class Attribution:
    path: str
    label: str  # the multiclass answer; the verdict when the model has no multiclass head
    probability: Optional[float]  # of `label` by the multiclass head; None without one
    top: list  # [(class name, probability)] best first
    probabilities: dict = field(default_factory=dict)
    verdict: str = ""  # real | <architecture> | multiple | unknown-generator (tfdnadet.verdict)
    attributed: list = field(default_factory=list)  # positive architecture heads, best first
    heads: dict = field(default_factory=dict)  # binary head -> {"score", "threshold", "positive"}
    knownness: Optional[float] = None  # the rejection score (tfdnadet.rejection) when the model has a rule

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": n, "probability": p} for n, p in self.top],
            "probabilities": self.probabilities,
            "verdict": self.verdict,
            "attributed": self.attributed,
            "heads": self.heads,
            "knownness": self.knownness,
        }


def expand_inputs(inputs: list) -> tuple:
    """Files and folders -> (image files, failures [(path, reason)])."""
    files, failures = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = list_image_files(item)
            files += found
            if not found:
                failures.append((item, "folder holds no image files"))
        elif os.path.isfile(item):
            files.append(item)
        else:
            failures.append((item, "no such file or folder"))
    return files, failures


def load_for_detector(detector: Detector, paths: list, labels=None) -> LoadedImages:
    p = detector.preprocessing
    labels = np.zeros(len(paths), np.int32) if labels is None else labels
    return load_images(ImageList(list(paths), labels, []), p.base_size, p.max_pixels, min_size=p.min_image_side)


def predict_loaded(detector: Detector, loaded: LoadedImages, batch_size: int = 16, transform=None, score=None) -> dict:
    """Per-head probabilities for decoded base-size images: {head: [N, ...]}.

    `transform` maps each batch of model inputs to what is predicted (e.g. its patches) before the heads run.
    With a rejection `score` name, or a model with a rejection rule, KNOWNNESS [N] holds that rejection score
    (tfdnadet.rejection) of each image, from the same forward pass (not with `transform`).
    """
    if not (score or detector.rejection) or transform is not None:
        return predict_loaded_with_features(detector, loaded, (), batch_size, transform)[0]
    if score:
        check_score(detector, score)
    outputs, features = predict_loaded_with_features(detector, loaded, rejection_layers(detector, score), batch_size)
    return _with_knownness(detector, outputs, features, score)


def predict_loaded_with_features(detector: Detector, loaded: LoadedImages, layers, batch_size: int = 16, transform=None) -> tuple:
    """`predict_loaded`, plus {layer: [N, n, ...]} of the named backbone layers on the model's grid, from the same pass."""
    batches = make_image_dataset(loaded.images, None, detector.preprocessing.input_size, batch_size)
    return _predict_batches(detector, (transform(batch) if transform else batch for batch in batches), layers)


LOOKAHEAD_BYTES = 64 << 20


def predict_files(detector: Detector, files: list, batch_size: int = 16) -> tuple:
    """Decode, resize and predict image files in one stream, the next batches decoding while the model runs on
    this one -> ({head: probabilities [N, ...]} (and KNOWNNESS with a rejection rule), the N usable paths,
    failures [(path, reason)]), in the order of `files`."""
    p = detector.preprocessing
    stream = decode_images(ImageList(list(files), np.zeros(len(files), np.int32), []), p.base_size, p.max_pixels, p.min_image_side)
    batches = (
        stream.dataset.filter(lambda index, image, ok: ok)
        .batch(batch_size)
        .map(lambda index, images, ok: (index, to_model_input(images, p.input_size)), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(_lookahead_batches(batch_size, p.input_size))
        .with_options(_decoding_options(batch_size, p.input_size))
    )
    indices = []

    def model_inputs():
        for index, images in batches:
            indices.append(index.numpy())
            yield images
        rest, images = stream.rest(np.concatenate(indices) if indices else [])
        for start in range(0, len(rest), batch_size):
            indices.append(rest[start : start + batch_size])
            yield to_model_input(images[start : start + batch_size], p.input_size)

    outputs, features = _predict_batches(detector, model_inputs(), rejection_layers(detector) if detector.rejection else ())
    processed = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    order = np.argsort(processed, kind="stable")  # back to the order of `files`
    outputs, features = ({name: value[order] for name, value in collected.items()} for collected in (outputs, features))
    if detector.rejection:
        outputs = _with_knownness(detector, outputs, features)
    return outputs, [files[i] for i in processed[order]], [stream.failures[i] for i in sorted(stream.failures)]


def _lookahead_batches(batch_size: int, input_size: int) -> int:
    """How many batches are decoded ahead of the model: about LOOKAHEAD_BYTES of float32 model inputs."""
    return max(1, LOOKAHEAD_BYTES // (batch_size * input_size * input_size * 3 * 4))


def _decoding_options(batch_size: int, input_size: int) -> tf.data.Options:
    """Small inputs: decoding threads as tf.data likes, decoding is the slow part. Large inputs (one batch ahead):
    one decoding thread, as a pool of them beside the model's own threads stalls the forward pass on a CPU
    (benchmarks/predict_e2e.py, paper width: 14.6 images/s end to end with tf.data's pool, 20.7-21.1 with one
    thread, 22.5 for the model alone)."""
    options = tf.data.Options()
    if _lookahead_batches(batch_size, input_size) == 1:
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
    return options


def _predict_batches(detector: Detector, batches, layers) -> tuple:
    """({head: [N, ...]}, {layer: [N, n, ...]}) over model-input batches, one forward pass each."""
    outputs, features = {}, {}
    for batch in batches:
        probabilities, maps = detector.predict_with_features(batch, layers)
        for collected, values in ((outputs, probabilities), (features, maps)):
            for name, value in values.items():
                collected.setdefault(name, []).append(value)
    return tuple({name: np.concatenate(parts) for name, parts in collected.items()} for collected in (outputs, features))


def _with_knownness(detector: Detector, outputs: dict, features: dict, score=None) -> dict:
    if not outputs:  # no usable image
        return outputs
    return {**outputs, KNOWNNESS: knownness(detector, outputs, features, score).numpy()}


def attribute(detector: Detector, inputs: list, batch_size: int = 16, top_k: int = 3) -> tuple:
    """Attribute files/folders -> (attributions, failures [(path, reason)])."""
    files, failures = expand_inputs(inputs)
    outputs, paths, unusable = predict_files(detector, files, batch_size)
    failures += unusable
    if not paths:
        return [], failures
    names = detector.class_names if MULTICLASS in outputs else []
    probabilities = outputs.get(MULTICLASS, np.zeros((len(paths), 0)))
    results = []
    knownness_of = outputs.get(KNOWNNESS, [None] * len(paths))
    for path, row, verdict, known in zip(paths, probabilities, verdicts(detector, outputs), knownness_of):
        order = np.argsort(-row)
        results.append(
            Attribution(
                path,
                names[order[0]] if names else verdict.label,
                float(row[order[0]]) if names else None,
                [(names[i], float(row[i])) for i in order[:top_k]],
                {name: float(v) for name, v in zip(names, row)},
                verdict.label,
                verdict.architectures,
                verdict.heads,
                None if known is None else float(known),
            )
        )
    return results, failures
