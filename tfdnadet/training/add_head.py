"""One-vs-all heads [Khoo 3.1-3.2]: train one binary head on the frozen backbone and write only its folder.

The head learns with the patchwise objective of stage 2 [4.2] (SupCon on its embedding + sigmoid cross-entropy)
on class-balanced batches: k images of its architecture and k of each negative class per step.
"""

import dataclasses
import math
import os
from typing import Optional

import keras
import numpy as np

from tfdnadet.config import Config, HeadsConfig, config_with_overrides
from tfdnadet.data.perturb import make_augment
from tfdnadet.data.pipeline import LoadedImages, check_classes_present, make_patch_dataset
from tfdnadet.data.sources import ImageList, list_image_files, read_dataset, split_train_val
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.heads import binary_metrics, negatives_threshold, validation_fields
from tfdnadet.models.model_dir import check_head_name
from tfdnadet.inference import load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector, feature_extractor
from tfdnadet.models.model_dir import load_detector, save_detector, write_head
from tfdnadet.models.encoder import ENCODER_BLOCKS, POOL_LAYER, Encoder, block_layer_name
from tfdnadet.models.heads import EMBEDDING_LAYER, BinaryHead
from tfdnadet.training.patch_model import PatchContrastiveModel
from tfdnadet.training.trainer import make_optimizer

POSITIVE = 0  # label of the head's architecture; negative classes are 1..N


def add_head(
    model_dir: str,
    name: str,
    positives: str,
    negatives: tuple = (),
    *,
    finetune_top: Optional[int] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    threshold_fpr: Optional[float] = None,
    replace: bool = False,
    verbose: int = 0,
    on_skipped=None,
) -> dict:
    """Train head `name` (positives: a folder of its images) and write model_dir/heads/<name>; returns its head.json.

    Negatives default to the model's recorded training data, less any class called `name`; each of its classes,
    or each --negatives folder, stays a class of its own for the class-balanced batches and SupCon.
    """
    check_head_name(name)
    detector = load_detector(model_dir)
    if name in detector.heads and not replace:
        raise TfdnadetError(f"Head '{name}' already exists in {model_dir}: pass --replace to train it again.")
    config = config_with_overrides(
        {k: v for k, v in detector.config.items() if k in {f.name for f in dataclasses.fields(Config)}},
        {"heads.finetune_top": finetune_top, "heads.epochs": epochs, "heads.steps_per_epoch": steps_per_epoch, "heads.threshold_fpr": threshold_fpr},
    )
    positive_files = _image_files(positives, "Positives")
    negative_list = _negatives(detector, model_dir, name, negatives, config)
    taken = {os.path.realpath(p) for p in positive_files}
    keep = [i for i, p in enumerate(negative_list.paths) if os.path.realpath(p) not in taken]
    images = ImageList(
        positive_files + [negative_list.paths[i] for i in keep],
        np.concatenate([np.full(len(positive_files), POSITIVE, np.int32), negative_list.labels[keep] + 1]),
        [name, *negative_list.class_names],
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
    """Train a binary head (label 0 = `name`, 1..N negative classes) on the frozen backbone; add it to `detector`."""
    h, t = config.heads, config.train
    if not 0 <= h.finetune_top < len(ENCODER_BLOCKS):
        raise TfdnadetError(f"--finetune-top must be 0..{len(ENCODER_BLOCKS) - 1}. Received: {h.finetune_top}")
    keras.utils.set_random_seed(t.seed)
    backbone = detector.backbone
    input_layer = block_layer_name(len(ENCODER_BLOCKS) - h.finetune_top) if h.finetune_top else POOL_LAYER
    if (h.finetune_top and not isinstance(backbone, Encoder)) or input_layer not in {layer.name for layer in backbone.layers}:
        raise TfdnadetError(f"A binary head cannot read '{input_layer}' of this model's {type(backbone).__name__} backbone.")
    head = BinaryHead(
        backbone.get_layer(input_layer).output.shape[-1],
        h.hidden,
        h.finetune_top,
        width=backbone.width,
        cosine_scale=h.cosine_scale,
        dtype=backbone.get_layer(input_layer).dtype_policy.name,
        name=name,
    )
    _copy_block_weights(backbone, head)
    model = _training_model(backbone, head, input_layer, config)
    num_classes = int(train.labels.max()) + 1
    steps = h.steps_per_epoch or max(1, math.ceil(len(train.labels) / (config.data.images_per_class * num_classes)))
    augment = make_augment(config.data.augment) if config.data.augment else None
    dataset = make_patch_dataset(train.images, train.labels, num_classes, config.data, seed=t.seed, augment=augment)
    model.fit(dataset, steps_per_epoch=steps, epochs=h.epochs, verbose=verbose, shuffle=False)  # the data set shuffles
    positives = int(np.sum(train.labels == POSITIVE))
    detector.add_head(
        name,
        head,
        {
            **(info or {}),
            "input_layer": input_layer,
            "finetune_top": h.finetune_top,
            "positives": positives,
            "negatives": len(train.labels) - positives,
            "epochs": h.epochs,
            "steps": steps * h.epochs,
        },
    )
    detector.head_info[name].update(_validation_metrics(detector, name, val, h))
    return head


def train_one_vs_all(model_dir: str, train: LoadedImages, val: LoadedImages, class_names: list, config: Config, verbose: int = 0) -> None:
    """Replace a stage-2 model's multiclass head by one binary head per class (`train-stage2 --heads one-vs-all`)."""
    for name in class_names:
        check_head_name(name)
    detector = load_detector(model_dir)
    for index, name in enumerate(class_names):
        # Class `index` becomes label 0; the others keep their order as 1..N.
        relabel = lambda labels: np.where(labels == index, POSITIVE, labels + (labels < index))  # noqa: E731
        fit_binary_head(detector, name, *(dataclasses.replace(part, labels=relabel(part.labels)) for part in (train, val)), config, verbose)
    binary = [name for name in detector.heads if name != MULTICLASS]
    save_detector(
detector.with_heads(binary), model_dir)


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


def _validation_metrics(detector: Detector, name: str, val: LoadedImages, h: HeadsConfig) -> dict:
    """The head's threshold (heads.threshold_fpr on the validation split's negatives, else heads.threshold) and its
    precision/recall there (none when the split lacks positives or negatives).

    The split usually holds the training generators, so the threshold only bounds false alarms on them: other seeds
    and unknown architectures need `heads calibrate` on images of held-out generators.
    """
    negatives = val.labels != POSITIVE
    scores = predict_loaded(detector, val)[name][:, 0] if negatives.any() else None
    if scores is not None and h.threshold_fpr is not None:
        rule = f"validation negatives, false-positive rate <= {h.threshold_fpr}"
        fields = {"threshold": negatives_threshold(scores[negatives], h.threshold_fpr), "threshold_rule": rule}
    else:
        fields = {"threshold": h.threshold, "threshold_rule": "default"}
    if scores is None or negatives.all():
        return fields
    return {**validation_fields(binary_metrics(~negatives, scores, fields["threshold"])), **fields}


def _image_files(folder: str, what: str) -> list:
    if not os.path.isdir(folder):
        raise TfdnadetError(f"{what} folder not found: {folder}")
    files = list_image_files(folder)
    if not files:
        raise TfdnadetError(f"{what} folder {folder} holds no image files.")
    return files


def _negatives(detector: Detector, model_dir: str, name: str, folders: tuple, config: Config) -> ImageList:
    """Given folders (one class each), else the model's recorded training data without class `name`."""
    if folders:
        files = [_image_files(folder, "Negatives") for folder in folders]
        labels = np.concatenate([np.full(len(f), i, np.int32) for i, f in enumerate(files)])
        return ImageList([p for f in files for p in f], labels, [os.path.abspath(folder) for folder in folders])
    source = detector.config.get("data_source")
    if not source or not os.path.exists(source):
        raise TfdnadetError(
            f"{model_dir} does not record training data that still exists ({source or 'none recorded'}): give --negatives DIR."
        )
    images = read_dataset(source, config.data.class_names)
    names = [n for n in images.class_names if n != name]
    if not names:
        raise TfdnadetError(f"The model's training data {source} holds no images other than class '{name}': give --negatives DIR.")
    keep = [i for i, label in enumerate(images.labels) if images.class_names[label] != name]
    relabel = np.asarray([names.index(n) if n in names else -1 for n in images.class_names], np.int32)
    return ImageList([images.paths[i] for i in keep], relabel[images.labels[keep]], names)


def _sources(negatives: tuple, detector: Detector) -> list:
    return [os.path.abspath(n) for n in negatives] if negatives else [detector.config.get("data_source")]
