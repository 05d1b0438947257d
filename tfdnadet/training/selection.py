"""Model selection on held-out generators: the epoch a run keeps is chosen on generator models not in training.

Held-out images of the training generators reward learning those generators' own fingerprints (their accuracy
keeps rising while other seeds and finetunes fall), so they are recorded beside, never used to choose.

A run trained with `data.augment` is chosen on the validation models both as they are and under that augmentation
(the mean of the two accuracies): robustness keeps growing for epochs after the clean accuracy has levelled off,
and a choice on clean images alone keeps an early, fragile epoch.
"""

import contextlib
import dataclasses
import json
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfdnadet.atomic import atomic_path, write_json
from tfdnadet.data.perturb import make_augment
from tfdnadet.data.pipeline import LoadedImages
from tfdnadet.errors import TfdnadetError
from tfdnadet.inference import predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.zoo.build import VALIDATION_SPLIT, read_zoo

VAL_MODELS = "val_models"  # history.csv column prefix: accuracy on the validation generator models
VAL_MODELS_AUGMENTED = "val_models_augmented"  # ... the validation generator models under the training augmentation
SELECTION_SETS = (VAL_MODELS, VAL_MODELS_AUGMENTED)  # the epoch kept is the best on the mean of those judged
HELDOUT_IMAGES = "heldout_images"  # history.csv column prefix: held-out images of the training generators
AUGMENT_CHUNK = 256  # images augmented at once (the blur stacks a chunk's images into one)
BEST_WEIGHTS = "weights.weights.h5"
BEST_STATE = "state.json"


def validation_data(val_data: Optional[str], train_data: str) -> Optional[str]:
    """The data set of validation generator models: `val_data` (a zoo gives its validation split), else the
    validation split of the zoo that the training data belongs to, else None."""
    if val_data is not None:
        zoo = _zoo_of(val_data)
        if zoo is None:
            return val_data
        manifest = _validation_manifest(zoo)
        if manifest is None:
            raise TfdnadetError(f"--val-data {val_data}: the zoo at {zoo} has no {VALIDATION_SPLIT} split (rebuild it with `tfdnadet zoo build`).")
        return manifest
    for candidate in (train_data, os.path.dirname(os.path.abspath(train_data))):
        zoo = _zoo_of(candidate)
        if zoo is not None:
            return _validation_manifest(zoo)
    return None


def _zoo_of(path: str) -> Optional[str]:
    """The zoo directory that `path` names (zoo.json or its folder), else None."""
    folder = os.path.dirname(path) if os.path.basename(path) == "zoo.json" else path
    return folder if os.path.isfile(os.path.join(folder, "zoo.json")) else None


def _validation_manifest(zoo_dir: str) -> Optional[str]:
    split = read_zoo(zoo_dir)["splits"].get(VALIDATION_SPLIT)
    return os.path.join(zoo_dir, split["manifest"]) if split else None


def augmented_validation(val_models: Optional[LoadedImages], augment) -> Optional[LoadedImages]:
    """The validation models with their uint8 images under the training augmentation `augment` (data.augment: its
    entries or table5), drawn once with a fixed seed so that every epoch of every run is judged on the same pixels;
    None when training does not augment."""
    if not val_models or not augment or not len(val_models.labels):
        return None
    apply = make_augment(augment)
    images, starts = val_models.images, range(0, len(val_models.images), AUGMENT_CHUNK)
    chunks = [apply(tf.constant(images[start : start + AUGMENT_CHUNK]), tf.constant([0, start], tf.int64)).numpy() for start in starts]
    return dataclasses.replace(val_models, images=np.concatenate(chunks))


def selection_mode(select_on: str, has_val_models: bool) -> str:
    """train.select_on resolved: val_models or last (auto: val_models when there are validation models)."""
    if select_on == VAL_MODELS and not has_val_models:
        raise TfdnadetError("train.select_on=val_models needs validation generator models: pass --val-data (or train on a zoo that has a validation split).")
    if select_on == "auto":
        return VAL_MODELS if has_val_models else "last"
    return select_on


def read_selection(directory: str) -> Optional[dict]:
    """The state of a run's best checkpoint ({'epoch', 'accuracy': its score, 'accuracies': each epoch's score,
    'judged': its accuracy on each selection set, 'stopped_early'}), or None."""
    path = os.path.join(directory, BEST_STATE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, BEST_WEIGHTS)):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class GeneratorValidation(keras.callbacks.Callback):
    """Each epoch: image accuracy, judged by the Detector's forward pass (whole image or patch grid, as the model
    will predict), on each named set of (uint8 base-size images, labels) (None or empty: left out); logged as
    NAME_accuracy.

    With `select=True` the weights of the best epoch on the mean accuracy of the SELECTION_SETS present go to
    `directory` (atomically) and, after `patience` epochs without a better one, training stops.
    """

    def __init__(
        self, sets: dict, class_names: list, preprocessing: Preprocessing, batch_size: int, directory: str, select: bool, patience: Optional[int], initial_epoch: int
    ):
        super().__init__()
        self.sets = {name: LoadedImages(pair[0], np.asarray(pair[1]), [], []) for name, pair in sets.items() if pair is not None and len(pair[1])}
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.directory = directory
        self.select = select
        self.patience = patience
        state = read_selection(directory) or {"epoch": 0, "accuracy": -1.0, "accuracies": [], "stopped_early": False}
        state["accuracies"] = state["accuracies"][:initial_epoch]  # an epoch killed before its checkpoint runs again
        self.state = state
        self._detector = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        with averaged_weights(self.model):
            self._judge(epoch, logs)

    def _judge(self, epoch: int, logs: dict) -> None:
        for name, loaded in self.sets.items():
            logs[f"{name}_accuracy"] = self._accuracy(loaded)
        if not self.select or VAL_MODELS not in self.sets:
            return
        judged = {name: logs[f"{name}_accuracy"] for name in SELECTION_SETS if name in self.sets}
        score = float(np.mean(list(judged.values())))
        self.state["accuracies"].append(score)
        if score > self.state["accuracy"]:
            self.state.update(epoch=epoch + 1, accuracy=score, judged=judged)
            with atomic_path(self.directory, directory=True) as temporary:
                self.model.save_weights(os.path.join(temporary, BEST_WEIGHTS))
                write_json(os.path.join(temporary, BEST_STATE), self.state)
        else:
            if self.patience is not None and epoch + 1 - self.state["epoch"] >= self.patience:
                self.state["stopped_early"] = True
                self.model.stop_training = True
            write_json(os.path.join(self.directory, BEST_STATE), self.state)

    def _accuracy(self, loaded: LoadedImages) -> float:
        if self._detector is None:  # built once: it shares the model's variables, so it sees every update
            head = self.model.classifier
            info = {MULTICLASS: {"kind": head.kind, "class_names": self.class_names}}
            self._detector = Detector(self.model.backbone, {MULTICLASS: head}, info, self.preprocessing, {})
        return image_accuracy(self._detector, loaded, self.batch_size)


def image_accuracy(detector: Detector, loaded: LoadedImages, batch_size: int) -> float:
    """Share of decoded, labelled images whose multiclass answer is their label."""
    probabilities = predict_loaded(detector, loaded, batch_size)[MULTICLASS]
    return float(np.mean(np.argmax(probabilities, axis=1) == loaded.labels))


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """The model holds its optimizer's moving average of the weights inside the block (train.ema_momentum), its
    raw weights again after; a model without one is left as it is."""
    optimizer = getattr(model, "optimizer", None)
    if not getattr(optimizer, "use_ema", False):
        yield
        return
    raw = [variable.numpy() for variable in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, raw):
            variable.assign(value)
