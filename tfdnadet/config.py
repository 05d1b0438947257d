"""Configs: YAML files loaded into dataclasses; unknown keys are errors."""

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional, Union

import yaml

from tfdnadet.atomic import atomic_path
from tfdnadet.data.perturb import parse_augment
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.detector import Preprocessing
from tfdnadet.models.encoder import INPUT_FILTERS

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
LOSSES = ("pcl", "ce", "gfd")  # gfd: GFD-Net's Eq. 7 (config section gfd)
HEAD_LAYOUTS = ("multiclass", "one-vs-all")
PREDICT_ON = ("whole", "patches")
SELECT_ON = ("auto", "val_models", "last")
FROZEN_ENCODER = ("frozen", "none")  # train.finetune_from_block values that train the heads only
NULL = object()  # `--set KEY=null`: an override to null, where None means "not given"
_EXPONENT_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


@dataclass
class DataConfig:
    base_size: int = 128  # [5.1] first resize to the data set's lowest resolution
    input_size: int = 512  # [5.1] then up to 512 px to magnify the traces
    # Stage 2: training images larger than base_size keep their resolution up to this side (the paper's "data set's
    # lowest resolution" [5.1]): the base size becomes their smallest side, clamped to [base_size, max_base_size],
    # and input_size grows by the same factor. Shrinking them would wipe out the finest generator traces.
    # null: every image is resized to base_size.
    max_base_size: Optional[int] = None
    patch_size: int = 64  # [5.1, App. E] 64 px patches (crop ratio 1/8)
    patches_per_image: int = 16  # [5.1] 16 random patches per image
    images_per_class: int = 32  # [5.1] batch = 32 x #classes, class balanced
    val_fraction: float = 0.1
    split_seed: int = 0
    class_names: Optional[list] = None  # names of integer labels in annotation files
    max_pixels: int = 100_000_000  # larger images are refused (decompression bombs)
    # whole: predict on the full input image [5.1]; patches: mean of the predictions of its grid of patches
    predict_on: str = "whole"
    # predict_on: patches — how the grid is cut and its cells' answers made one (saved with the model):
    aggregation: str = "mean_probability"  # mean_probability | mean_logit | vote
    grid_stride: Optional[int] = None  # pixels between cells; null: patch_size (no overlap); patch_size / 2 overlaps
    grid_scales: list = field(default_factory=lambda: [1.0])  # a grid cut from the input resized by each factor
    # [5.5] train augmentation, in order: [{op: crop|blur|jpeg|noise|relight|symmetry|transpose|channels, p: 0.5, <parameter>: [low, high]}],
    # or table5: the five Table 5 attacks in Khoo's combination, each with probability 0.5
    augment: Union[list, str] = field(default_factory=list)


@dataclass
class ModelConfig:
    backbone: str = "dnadet"
    width: float = 1.0  # channel multiplier of Table 7 (64..512 at 1.0)
    input_filter: str = "none"  # none: the image; highpass: its noise residual (each channel minus its 3 x 3 mean)
    projection_hidden: int = 512  # [App. A, Table 7] Linear 512, ReLU
    projection_dim: int = 128  # [App. A, Table 7] Linear 128, Normalize


@dataclass
class TrainConfig:
    epochs: int = 20  # [App. D] models taken at epoch 20
    steps_per_epoch: Optional[int] = None  # None: one pass over the training images
    learning_rate: float = 1e-4  # [5.1] celebA setting
    decay_steps: int = 500  # [5.1] x0.9 every 500 iterations
    decay_rate: float = 0.9
    temperature: float = 0.07  # SupCon temperature (Khosla et al. 2020)
    loss: str = "pcl"  # pcl: SupCon + CE, uncertainty weighted [4.2]; ce: Base ablation; gfd: GFD-Net
    precision: str = "auto"  # mixed_bfloat16 where the CPU/GPU has native bfloat16 (tfdnadet.precision), else float32
    jit_compile: bool = False
    distribution: str = "default"  # default | mirrored (all local GPUs, or `devices`) | multi_worker
    devices: Optional[list] = None  # e.g. ["/gpu:0", "/gpu:1"]; None: TensorFlow's choice
    seed: int = 0
    eval_batch_size: int = 16
    gradcam_images: int = 8  # [5.4, Fig. 6] Grad-CAM (layer 4) of this many validation images each epoch; 0: off
    tensorboard: bool = True  # TensorBoard logs in RUN_DIR/tb (losses, Grad-CAM images)
    # Which encoder blocks stage 2 trains: 0 all; K blocks K.. (1..K-1 frozen, their BatchNorm in inference mode);
    # frozen (or none): heads only on the stage-1 encoder. Khoo 3.2's modules branch after a block in the same way.
    finetune_from_block: Any = 0
    # The epoch a run keeps: val_models = best accuracy on generator models not in training (--val-data), last = the
    # last epoch, auto = val_models when there are validation models. Never chosen on held-out images of the
    # training generators: more epochs learn those generators' own fingerprints, not their architecture.
    select_on: str = "auto"
    patience: Optional[int] = None  # stop after this many epochs without a better validation-model accuracy; None: never
    # Keep an exponential moving average of the trained weights (momentum per step); validation, the kept epoch and
    # the saved model use the average. Averaged weights sit in a flatter region that holds better on generators
    # never seen (weight averaging for domain generalization, Cha et al. 2021, SWAD). None: the raw weights.
    ema_momentum: Optional[float] = None
    # Stage-2 runs per stage-1 encoder (seeds train.seed x runs + 0, 1, ...), averaged into one model
    # (tfdnadet.models.ensemble): runs that differ only in their seed disagree most on generators never seen.
    runs_per_encoder: int = 1
    # Minutes of stage 1 (as its ensemble recorded them) and stage 2 together: every stage-1 encoder gets one run, a
    # further run starts only while the runs so far, at their mean time, leave room for it. None: all runs.
    budget_minutes: Optional[float] = None


@dataclass
class Stage1Config:
    # [4.1] one class per (operation, parameter): {op: [parameter per class]}; None = the paper's 170 classes
    transforms: Optional[dict] = None
    crops: int = 20_000  # [4.1] random base-size crops of natural photos that the transformations are applied to
    images_per_class: int = 2  # class-balanced batches as in stage 2 [5.1], but k x 170 classes must fit a step
    epochs: Optional[int] = None  # passes of stage 1 (None: train.epochs); its many classes need more than stage 2
    encoders: int = 1  # stage-1 encoders trained (seeds train.seed x encoders + 0, 1, ...); stage 2 fine-tunes each
    # Minutes of stage 1: another encoder starts only while the ones trained, at their mean time, leave room for it
    # (the first always trains). None: all `encoders`, however long they take on this machine.
    budget_minutes: Optional[float] = None
    # With a budget: where fewer than `encoders` fit, encoders of this many epochs instead, if more of them fit (the
    # first encoder's first epochs are timed to decide). None: encoders always train `epochs`.
    min_epochs: Optional[int] = None


@dataclass
class HeadsConfig:
    layout: str = "multiclass"  # stage 2 writes a multiclass head, or one-vs-all: one sigmoid head per class [Khoo 3.1]
    hidden: int = 512  # a binary head's embedding width, as the projection's Linear 512 [App. A, Table 7]
    cosine_scale: float = 30.0  # sigmoid(scale * (cosine - margin)) bounds the positive region (NormFace/CosFace scale)
    finetune_top: int = 0  # [Khoo 3.2] private copies of the last K encoder blocks (their modules branch after layer 4)
    # Passes of the head alone. Chosen on the `small` zoo's validation generators (another seed on other photos) for
    # progan and stylegan2 heads, threshold from validation negatives: 3 / 5 / 8 / 12 recalled 0.75 / 0.92 / 1.00 /
    # 1.00 and 0.54 / 0.89 / 0.97 / 0.99, firing on 1.2 / 1.7 / 4.8 / 2.1 % and 2.5 / 3.3 / 6.7 / 7.1 % of the
    # other classes' validation images.
    epochs: int = 12
    steps_per_epoch: Optional[int] = None  # None: one pass over the positive and negative training images
    learning_rate: float = 1e-3  # [5.1] the paper's larger Adam rate
    # A new head's threshold, until `heads calibrate` tunes it on held-out generators: the lowest at which at most
    # this share of the validation split's negatives fire (other seeds of the head's architecture score below its
    # own generator's images, so 0.5 misses them); null, or a split without negatives: `threshold`.
    threshold_fpr: Optional[float] = 0.0
    threshold: float = 0.5  # sigmoid decision threshold [Khoo 3.2]


@dataclass
class GFDConfig:
    # [3.4, Eq. 7; 4.1] L_G = w1 latent CE + w2 adversarial + w3 auxiliary CE + w4 perceptual, w = 10, 0.1, 1, 1 for
    # attribution (w2 = 0.01 for fake-vs-real detection); a weight of 0 leaves its part out (Table 4 ablations)
    latent_weight: float = 10.0
    adversarial_weight: float = 0.1
    auxiliary_weight: float = 1.0
    perceptual_weight: float = 1.0
    # [3.3, Eq. 5] VGG-16 substitute: a stage-1 model directory (its encoder block `perceptual_layer`) or a .keras file
    perceptual_model: Optional[str] = None
    perceptual_layer: int = 4
    real_class: str = "real"  # [3.2] fingerprints are added to a random image of this class in the batch


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    gfd: GFDConfig = field(default_factory=GFDConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: Any, where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise TfdnadetError(f"Config section '{where}' must be a mapping, got {type(values).__name__}.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            inside = f"Known keys in '{where}'" if where else "Known sections"
            raise TfdnadetError(f"Unknown config key '{name}'. {inside}: {', '.join(known)}.")
        sub = known[key].type
        if dataclasses.is_dataclass(sub):
            value = _build(sub, value, name)
        else:
            _check_type(value, sub, name)
        kwargs[key] = value
    return cls(**kwargs)


def _check_type(value: Any, annotation: Any, where: str) -> None:
    """A value of the field's type (an int for a float is fine; a bool is not an int); Any fields are left to `validate`."""
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    if annotation is Any or (isinstance(value, int) and not isinstance(value, bool) and float in allowed):
        return
    if not any(isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) for kind in allowed):
        names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
        raise TfdnadetError(f"Config key '{where}' must be {names}. Received: {value!r}")


def config_from_dict(values: dict) -> Config:
    """Build and validate a Config from nested dicts."""
    config = _build(Config, values or {}, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    d, t, s = config.data, config.train, config.stage1
    checks = [
        (t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}. Received: {t.precision!r}"),
        (t.distribution in STRATEGIES, f"train.distribution must be one of {STRATEGIES}. Received: {t.distribution!r}"),
        (t.loss in LOSSES, f"train.loss must be one of {LOSSES}. Received: {t.loss!r}"),
        (d.patch_size <= d.input_size, f"data.patch_size ({d.patch_size}) must not exceed data.input_size ({d.input_size})"),
        (d.base_size > 0 and d.input_size > 0, "data.base_size and data.input_size must be positive"),
        (
            d.max_base_size is None or d.max_base_size >= d.base_size,
            f"data.max_base_size ({d.max_base_size}) must be at least data.base_size ({d.base_size}), or null",
        ),
        (d.predict_on in PREDICT_ON, f"data.predict_on must be one of {PREDICT_ON}. Received: {d.predict_on!r}"),
        (0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1). Received: {d.val_fraction}"),
        (d.images_per_class >= 1 and d.patches_per_image >= 1, "data.images_per_class and data.patches_per_image must be >= 1"),
        (t.epochs >= 1, f"train.epochs must be >= 1. Received: {t.epochs}"),
        (
            _valid_finetune_from_block(t.finetune_from_block),
            f"train.finetune_from_block must be an integer >= 0 or one of {FROZEN_ENCODER}. Received: {t.finetune_from_block!r}",
        ),
        (t.select_on in SELECT_ON, f"train.select_on must be one of {SELECT_ON}. Received: {t.select_on!r}"),
        (t.patience is None or (isinstance(t.patience, int) and t.patience >= 1), f"train.patience must be >= 1 or null. Received: {t.patience!r}"),
        (t.ema_momentum is None or 0 < t.ema_momentum < 1, f"train.ema_momentum must be in (0, 1) or null. Received: {t.ema_momentum!r}"),
        (t.ema_momentum is None or t.loss != "gfd", "train.ema_momentum averages the patch model's weights: leave it null for train.loss gfd"),
        (t.runs_per_encoder == 1 or t.loss != "gfd", "train.runs_per_encoder above 1 ensembles the patch model's runs: leave it 1 for train.loss gfd"),
        (t.gradcam_images >= 0, f"train.gradcam_images must be >= 0. Received: {t.gradcam_images}"),
        (config.heads.layout in HEAD_LAYOUTS, f"heads.layout must be one of {HEAD_LAYOUTS}. Received: {config.heads.layout!r}"),
        (0 < config.heads.threshold < 1, f"heads.threshold must be in (0, 1). Received: {config.heads.threshold}"),
        (
            config.heads.threshold_fpr is None or 0 <= config.heads.threshold_fpr < 1,
            f"heads.threshold_fpr must be in [0, 1) or null. Received: {config.heads.threshold_fpr}",
        ),
        (config.heads.epochs >= 1, f"heads.epochs must be >= 1. Received: {config.heads.epochs}"),
        (s.crops >= 1 and s.images_per_class >= 1, "stage1.crops and stage1.images_per_class must be >= 1"),
        (s.epochs is None or s.epochs >= 1, f"stage1.epochs must be >= 1 (or null: train.epochs). Received: {s.epochs}"),
        (_positive_int(s.encoders), f"stage1.encoders must be an integer >= 1. Received: {s.encoders!r}"),
        (
            s.budget_minutes is None or s.budget_minutes > 0,
            f"stage1.budget_minutes must be a number of minutes > 0, or null. Received: {s.budget_minutes!r}",
        ),
        (
            s.min_epochs is None or _positive_int(s.min_epochs),
            f"stage1.min_epochs must be an integer >= 1, or null. Received: {s.min_epochs!r}",
        ),
        (_positive_int(t.runs_per_encoder), f"train.runs_per_encoder must be an integer >= 1. Received: {t.runs_per_encoder!r}"),
        (
            t.budget_minutes is None or t.budget_minutes > 0,
            f"train.budget_minutes must be a number of minutes > 0, or null. Received: {t.budget_minutes!r}",
        ),
        (config.model.input_filter in INPUT_FILTERS, f"model.input_filter must be one of {INPUT_FILTERS}. Received: {config.model.input_filter!r}"),
        (
            config.model.input_filter == "none" or config.model.backbone == "dnadet",
            f"model.input_filter filters the DNA-Det encoder's input: model.backbone must be dnadet. Received: {config.model.backbone!r}",
        ),
        (
            (s.encoders == 1 and t.runs_per_encoder == 1) or config.model.backbone == "dnadet",
            f"stage1.encoders and train.runs_per_encoder above 1 ensemble DNA-Det encoders: model.backbone must be dnadet. Received: {config.model.backbone!r}",
        ),
        (config.gfd.latent_weight > 0, f"gfd.latent_weight must be > 0 (it trains the head). Received: {config.gfd.latent_weight}"),
        (
            min(config.gfd.adversarial_weight, config.gfd.auxiliary_weight, config.gfd.perceptual_weight) >= 0,
            "gfd.adversarial_weight, gfd.auxiliary_weight and gfd.perceptual_weight must be >= 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise TfdnadetError(message)
    parse_augment(d.augment)
    Preprocessing.from_data_config(d)  # checks aggregation and the grid


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _valid_finetune_from_block(value) -> bool:
    if isinstance(value, bool):
        return False
    return value in FROZEN_ENCODER or (isinstance(value, int) and value >= 0)


def builtin_config_names() -> list:
    return sorted(p.name[:-5] for p in resources.files("tfdnadet.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(source: Optional[str] = None, overrides: Optional[dict] = None) -> Config:
    """Load a config from a YAML path or a built-in name (paper, cpu, tiny); apply dotted overrides."""
    return config_with_overrides(_read_yaml(source or "cpu"), overrides)


def config_with_overrides(values: dict, overrides: Optional[dict] = None) -> Config:
    """Build a Config from nested dicts (a YAML file, a model's recorded config) with dotted overrides applied
    (None: not given, NULL: null)."""
    values = {section: dict(v) if isinstance(v, dict) else v for section, v in values.items()}
    for dotted, value in (overrides or {}).items():
        if value is None:  # an option not given
            continue
        section, _, key = dotted.partition(".")
        values.setdefault(section, {})
        values[section][key] = None if value is NULL else value
    return config_from_dict(values)


def parse_settings(settings) -> dict:
    """`--set SECTION.KEY=VALUE` strings -> {"SECTION.KEY": value}; VALUE is read as YAML (3, 1e-4, [a, b], null)."""
    overrides = {}
    for item in settings or ():
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise TfdnadetError(f"--set expects SECTION.KEY=VALUE, e.g. --set train.epochs=3. Received: {item!r}")
        try:
            value = yaml.safe_load(value)
            overrides[key.strip()] = NULL if value is None else _number_or_value(value)
        except yaml.YAMLError:
            raise TfdnadetError(f"--set {item!r}: the value is not valid YAML.") from None
    return overrides


def _number_or_value(value):
    """YAML 1.1 reads 1e-4 (no dot) as a string; a learning rate written so is meant as a number."""
    return float(value) if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value) else value


def _read_yaml(source: str) -> dict:
    if os.path.exists(source):
        text = open(source, encoding="utf-8").read()
    elif source in builtin_config_names():
        text = resources.files("tfdnadet.configs").joinpath(f"{source}.yaml").read_text(encoding="utf-8")
    else:
        raise TfdnadetError(
            f"Config not found: {source!r} is neither a file nor a built-in config ({', '.join(builtin_config_names())})."
        )
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TfdnadetError(f"Config {source!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise TfdnadetError(f"Config {source!r} must be a mapping of sections (data, model, train).")
    return values


def config_changes(before: Config, after: Config) -> list:
    """'section.key' of each value that differs between two configs, model keys first."""
    old, new = before.to_dict(), after.to_dict()
    changed = [f"{section}.{key}" for section in old for key in old[section] if old[section][key] != new[section][key]]
    return sorted(changed, key=lambda name: not name.startswith("model."))


def save_config(config: Config, path: str) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
