"""One-vs-all heads [Khoo 3.1-3.2]: train one binary head on the frozen backbone and write only its folder.

The head learns with the patchwise objective of stage 2 [4.2] (SupCon on its embedding + sigmoid cross-entropy)
on class-balanced batches: k positive and k negative images per step.
"""

import dataclasses
import math
import os
from typing import Optional

import keras
import numpy as np

from tfdnadet.config import Config, config_with_overrides
from tfdnadet.data.pipeline import LoadedImages, check_classes_present, make_patch_dataset
from tfdnadet.data.sources import ImageList, list_image_files, read_dataset, split_train_val
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.heads import pick_threshold
from tfdnadet.heads import check_head_name, validation_fields
from tfdnadet.inference import load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector, feature_extractor, load_detector, save_detector, write_head
from tfdnadet.models.encoder import ENCODER_BLOCKS, POOL_LAYER, block_layer_name
from tfdnadet.models.heads import EMBEDDING_LAYER, BinaryHead
from tfdnadet.training.patch_model import PatchContrastiveModel
from tfdnadet.training.trainer import make_optimizer

NEGATIVE, POSITIVE = 0, 1


def add_head(
    model_dir: str,
    name: str,
    positives: str,
    negatives: tuple = (),
    *,
    finetune_top: Optional[int] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    replace: bool = False,
    verbose: int = 0,
    on_skipped=None,
) -> dict:
    """Train head `name` (positives: a folder of its images) and write model_dir/heads/<name>; returns its head.json.

    Negatives default to the model's recorded training data, less any class called `name`.
    """
    check_head_name(name)
    detector = load_detector(model_dir)
    if name in detector.heads and not replace:
        raise TfdnadetError(f"Head '{name}' already exists in {model_dir}: pass --replace to train it again.")
    config = config_with_overrides(
        {k: v for k, v in detector.config.items() if k in {f.name for f in dataclasses.fields(Config)}},
        {"heads.finetune_top": finetune_top, "heads.epochs": epochs, "heads.steps_per_epoch": steps_per_epoch},
    )
    positive_files = _image_files(positives, "Positives")
    negative_list = _negatives(detector, model_dir, name, negatives, config)
    taken = {os.path.realpath(p) for p in positive_files}
    negative_paths = [p for p in negative_list.paths if os.path.realpath(p) not in taken]
    images = ImageList(
        positive_files + negative_paths,
        np.asarray([POSITIVE] * len(positive_files) + [NEGATIVE] * len(negative_paths), np.int32),
        ["other", name],
    )
    train_list, val_list = split_train_val(images, config.data.val_fraction, config.data.split_seed)
    train, val = (load_for_detector(detector, part.paths, part.labels) for part in (train_list, val_list))
    for loaded in (train, val):
        if loaded.failures and on_skipped:
            on_skipped(loaded.failure_summary())
    check_classes_present(train, images.class_names, "training")
    sources = {"positives_source": os.path.abspath(positives), "negatives_source": _sources(negatives, detector)}
    head = fit_binary_head(detector, name, train, val, config, verbose, sources)
    write_head(model_dir, name, head, detector.head_info[name])
    return detector.head_info[name]


def fit_binary_head(
    detector: Detector, name: str, train: LoadedImages, val: LoadedImages, config: Config, verbose: int = 0, info: Optional[dict] = None
) -> BinaryHead:
    """Train a binary head (labels 1 = `name`) on the frozen backbone, add it to `detector` with its threshold."""
    h, t = config.heads, config.train
    if not 0 <= h.finetune_top < len(ENCODER_BLOCKS):
        raise TfdnadetError(f"--finetune-top must be 0..{len(ENCODER_BLOCKS) - 1}. Received: {h.finetune_top}")
    keras.utils.set_random_seed(t.seed)
    backbone = detector.backbone
    input_layer = block_layer_name(len(ENCODER_BLOCKS) - h.finetune_top) if h.finetune_top else POOL_LAYER
    head = BinaryHead(
        backbone.get_layer(input_layer).output.shape[-1],
        h.hidden,
        h.finetune_top,
        width=backbone.width,
        dtype=backbone.dtype_policy.name,
        name=name,
    )
    _copy_block_weights(backbone, head)
    model = _training_model(backbone, head, input_layer, config)
    k = config.data.images_per_class
    steps = h.steps_per_epoch or max(1, math.ceil(len(train.labels) / (2 * k)))
    dataset = make_patch_dataset(train.images, train.labels, 2, config.data, seed=t.seed)
    model.fit(dataset, steps_per_epoch=steps, epochs=h.epochs, verbose=verbose)
    counts = np.bincount(train.labels, minlength=2)
    detector.add_head(
        name,
        head,
        {
            **(info or {}),
            "input_layer": input_layer,
            "finetune_top": h.finetune_top,
            "positives": int(counts[POSITIVE]),
            "negatives": int(counts[NEGATIVE]),
            "epochs": h.epochs,
            "steps": steps * h.epochs,
            "threshold": h.threshold,
        },
    )
    detector.head_info[name].update(_validation_threshold(detector, name, val))
    return head


def train_one_vs_all(model_dir: str, train: LoadedImages, val: LoadedImages, class_names: list, config: Config, verbose: int = 0) -> None:
    """Replace a stage-2 model's multiclass head by one binary head per class (`train-stage2 --heads one-vs-all`)."""
    for name in class_names:
        check_head_name(name)
    detector = load_detector(model_dir)
    for index, name in enumerate(class_names):
        one_vs_all = [dataclasses.replace(part, labels=(part.labels == index).astype(np.int32)) for part in (train, val)]
        fit_binary_head(detector, name, *one_vs_all, config, verbose)
    binary = [name for name in detector.heads if name != MULTICLASS]
    save_detector(
        Detector(
            detector.backbone,
            {name: detector.heads[name] for name in binary},
            {name: detector.head_info[name] for name in binary},
            detector.preprocessing,
            detector.config,
        ),
        model_dir,
    )


def _training_model(backbone: keras.Model, head: BinaryHead, input_layer: str, config: Config) -> PatchContrastiveModel:
    """Frozen backbone up to `input_layer` -> the head's embedding (projected for SupCon) and logit."""
    m, t = config.model, config.train
    extractor = feature_extractor(backbone, {input_layer})
    extractor.trainable = False  # frozen: BatchNorm keeps its statistics, no gradient reaches the backbone
    images = keras.Input(shape=(None, None, 3), name="images")
    embedding = keras.Model(head.inputs[0], head.get_layer(EMBEDDING_LAYER).output, name=f"{head.name}_embedding")
    trunk = keras.Model(images, embedding(extractor(images)[input_layer]), name="trunk")
    model = PatchContrastiveModel(
        trunk, 1, m.projection_hidden, m.projection_dim, t.temperature, t.loss, classifier=head.get_layer("logit"), name="head_model"
    )
    model.compile(optimizer=make_optimizer(t, config.heads.learning_rate), jit_compile=t.jit_compile)
    return model


def _copy_block_weights(backbone: keras.Model, head: BinaryHead) -> None:
    """A finetuned head's private encoder blocks start as copies of the backbone's (same layer names)."""
    for layer in head.layers:
        if layer.weights and layer.name.startswith("block"):
            layer.set_weights(backbone.get_layer(layer.name).get_weights())


def _validation_threshold(detector: Detector, name: str, val: LoadedImages) -> dict:
    """Best-F1 threshold and its metrics on the validation split, when it holds positives and negatives."""
    if len(set(val.labels.tolist())) < 2:
        return {"threshold_rule": "default (validation split lacks positives or negatives)"}
    scores = predict_loaded(detector, val)[name][:, 0]
    return {**validation_fields(pick_threshold(val.labels == POSITIVE, scores)), "threshold_rule": "best F1 on the validation split"}


def _image_files(folder: str, what: str) -> list:
    if not os.path.isdir(folder):
        raise TfdnadetError(f"{what} folder not found: {folder}")
    files = list_image_files(folder)
    if not files:
        raise TfdnadetError(f"{what} folder {folder} holds no image files.")
    return files


def _negatives(detector: Detector, model_dir: str, name: str, folders: tuple, config: Config) -> ImageList:
    """Given folders, else the model's recorded training data without class `name`."""
    if folders:
        paths = [p for folder in folders for p in _image_files(folder, "Negatives")]
        return ImageList(paths, np.zeros(len(paths), np.int32), ["other"])
    source = detector.config.get("data_source")
    if not source or not os.path.exists(source):
        raise TfdnadetError(
            f"{model_dir} does not record training data that still exists ({source or 'none recorded'}): give --negatives DIR."
        )
    images = read_dataset(source, config.data.class_names)
    others = images.subset(i for i, label in enumerate(images.labels) if images.class_names[label] != name)
    if not len(others):
        raise TfdnadetError(f"The model's training data {source} holds no images other than class '{name}': give --negatives DIR.")
    return others


def _sources(negatives: tuple, detector: Detector) -> list:
    return [os.path.abspath(n) for n in negatives] if negatives else [detector.config.get("data_source")]
