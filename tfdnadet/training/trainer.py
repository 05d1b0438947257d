"""The patchwise contrastive training loop shared by stage 1 and stage 2."""

import dataclasses
import functools
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import keras
import tensorflow as tf

from tfdnadet.atomic import write_json
from tfdnadet.config import FROZEN_ENCODER, Config, TrainConfig, config_changes, load_config, save_config
from tfdnadet.data.pipeline import make_image_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.backbones import create_backbone
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing, patch_grid
from tfdnadet.models.encoder import block_layer_name
from tfdnadet.model_metadata import read_metadata
from tfdnadet.models.model_dir import load_backbone, save_detector, write_decoder
from tfdnadet.precision import resolve_precision, with_resolved_precision
from tfdnadet.training.callbacks import (
    CHECKPOINT_WEIGHTS,
    AtomicCheckpoint,
    StopOnNonFiniteLoss,
    TrainingCurves,
    read_checkpoint_state,
    truncate_history,
)
from tfdnadet.training.gfd import GFD_LOSS, GFDModel, build_gfd_model
from tfdnadet.training.distribute import AverageOverWorkers, is_chief, make_strategy, task_count
from tfdnadet.training.gradcam_callback import evidence_callbacks
from tfdnadet.training.patch_model import PatchContrastiveModel
from tfdnadet.training.selection import (
    BEST_WEIGHTS,
    HELDOUT_IMAGES,
    VAL_MODELS,
    VAL_MODELS_AUGMENTED,
    GeneratorValidation,
    read_selection,
    selection_mode,
)


@dataclass
class TrainResult:
    run_dir: str
    model_dir: str
    epochs_completed: int
    steps: int
    history: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)  # the kept epoch and how it was chosen (also in run.json)


def build_patch_model(config: Config, num_classes: int, init_model: Optional[str] = None) -> PatchContrastiveModel:
    """Encoder (optionally initialised from a model directory) + heads, compiled with the paper's Adam decay."""
    m, t = config.model, config.train
    model = PatchContrastiveModel(
        build_backbone(config, init_model), num_classes, m.projection_hidden, m.projection_dim, t.temperature, t.loss, name="patch_model"
    )
    model.compile(optimizer=make_optimizer(t, t.learning_rate), jit_compile=t.jit_compile)
    return model


def build_backbone(config: Config, init_model: Optional[str] = None) -> keras.Model:
    """A new `config.model.backbone`, its weights copied from model directory `init_model` when given, frozen below
    `train.finetune_from_block`."""
    m, t = config.model, config.train
    filtered = {"input_filter": m.input_filter} if m.input_filter != "none" else {}  # an option of dnadet's only
    backbone = create_backbone(m.backbone, width=m.width, dtype=resolve_precision(t.precision), name="encoder", **filtered)
    if init_model:
        check_init_filter(config, init_model)
        _copy_backbone_weights(load_backbone(init_model), backbone, init_model)
    freeze_blocks(backbone, t.finetune_from_block)
    return backbone


def build_training_model(config: Config, class_names: list, init_model: Optional[str] = None) -> keras.Model:
    """The model `config.train.loss` trains: GFD-Net's (gfd) or the patch contrastive one (pcl, ce)."""
    config = with_resolved_precision(config)  # every part is built in one concrete dtype policy
    t = config.train
    if t.loss == GFD_LOSS:
        return build_gfd_model(config, class_names, build_backbone(config, init_model), lambda: make_optimizer(t, t.learning_rate))
    return build_patch_model(config, len(class_names), init_model)


def freeze_blocks(backbone: keras.Model, finetune_from_block) -> None:
    """Freeze the encoder below block `finetune_from_block` (all of it for `frozen`/`none`; nothing for 0 or 1).

    A frozen BatchNorm normalises with its moving statistics (Keras runs a non-trainable BatchNorm in inference mode).
    """
    if finetune_from_block in FROZEN_ENCODER:
        frozen = [layer for layer in backbone.layers if layer.weights]
    else:
        prefixes = tuple(f"{block_layer_name(index)}_" for index in range(1, finetune_from_block))
        frozen = [layer for layer in backbone.layers if layer.weights and layer.name.startswith(prefixes)]
        blocks = {layer.name.split("_")[0] for layer in backbone.layers if layer.weights and layer.name.startswith("block")}
        if finetune_from_block > 1 and finetune_from_block > len(blocks):
            raise TfdnadetError(
                f"train.finetune_from_block={finetune_from_block}: the {backbone.name} backbone has {len(blocks)} blocks "
                f"(use 0..{len(blocks)}, or frozen)."
            )
    for layer in frozen:
        layer.trainable = False


def make_optimizer(train: TrainConfig, learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam with the paper's staircase decay [5.1], an average of the weights with train.ema_momentum; loss scaling
    under mixed_float16."""
    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, train.decay_steps, train.decay_rate, staircase=True)
    averaged = train.ema_momentum is not None
    optimizer = keras.optimizers.Adam(schedule, use_ema=averaged, ema_momentum=train.ema_momentum if averaged else 0.99)
    if train.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def check_init_filter(config: Config, init_model: str) -> None:
    """Refuse an --init encoder trained on another input (model.input_filter) than `config`'s: its weights would fit,
    its features would not."""
    trained = read_metadata(init_model)["config"].get("model", {}).get("input_filter", "none")
    if trained != config.model.input_filter:
        raise TfdnadetError(
            f"--init {init_model}: its encoder was trained with model.input_filter {trained}, this config has "
            f"{config.model.input_filter}: set --set model.input_filter={trained}."
        )


def _copy_backbone_weights(source: keras.Model, target: keras.Model, where: str) -> None:
    shapes = [tuple(w.shape) for w in source.weights], [tuple(w.shape) for w in target.weights]
    if shapes[0] != shapes[1]:
        raise TfdnadetError(
            f"--init {where}: its encoder (width {getattr(source, 'width', '?')}) does not match this config's "
            f"(model.width {getattr(target, 'width', '?')})."
        )
    target.set_weights(source.get_weights())


def fit_patch_model(
    make_train_dataset: Callable[[int], tf.data.Dataset],
    steps_per_epoch: int,
    val_images: Optional[tuple],
    class_names: list,
    config: Config,
    run_dir: str,
    *,
    init_model: Optional[str] = None,
    resume: bool = False,
    verbose: int = 1,
    callbacks: tuple = (),
    model_info: Optional[dict] = None,
    val_models: Optional[tuple] = None,
    val_models_augmented: Optional[tuple] = None,
) -> TrainResult:
    """Train with checkpoints each epoch and write RUN_DIR/model; resume continues from the checkpoint.

    `make_train_dataset(step)` gives the training batches from batch `step` on: a resumed run trains on the batches
    the uninterrupted run would have, and ends with its weights.
    `val_images` is (uint8 base-size images, labels) of the training classes, held out from training;
    `val_models` the same for generator models not in training, on which the kept epoch is chosen
    (train.select_on), with `val_models_augmented` (their images under data.augment) when training augments.
    All are judged each epoch as the model will predict (history.csv, curves.png).
    """
    config = with_resolved_precision(config)  # config.yaml and the model record the precision really used
    strategy = make_strategy(config.train.distribution, config.train.devices)
    fit = functools.partial(
        _fit, strategy, make_train_dataset, steps_per_epoch, val_images, class_names, config,
        init_model=init_model, resume=resume, verbose=verbose, callbacks=callbacks, model_info=model_info,
        val_models=val_models, val_models_augmented=val_models_augmented,
    )  # fmt: skip
    if is_chief(strategy):
        return fit(run_dir)
    # Another worker takes part in every step but writes into a scratch directory, removed after; it resumes
    # from the chief's checkpoint where the run directory is on a shared file system.
    with tempfile.TemporaryDirectory(prefix="tfdnadet-worker-") as scratch:
        checkpoint_dir = os.path.join(run_dir, "checkpoint")
        if resume and read_checkpoint_state(checkpoint_dir):
            shutil.copytree(checkpoint_dir, os.path.join(scratch, "checkpoint"))
        result = fit(scratch)
    return dataclasses.replace(result, run_dir=run_dir, model_dir=os.path.join(run_dir, "model"))


def _fit(
    strategy: tf.distribute.Strategy,
    make_train_dataset: Callable[[int], tf.data.Dataset],
    steps_per_epoch: int,
    val_images: Optional[tuple],
    class_names: list,
    config: Config,
    run_dir: str,
    *,
    init_model: Optional[str],
    resume: bool,
    verbose: int,
    callbacks: tuple,
    model_info: Optional[dict],
    val_models: Optional[tuple],
    val_models_augmented: Optional[tuple],
) -> TrainResult:
    checkpoint_dir = os.path.join(run_dir, "checkpoint")
    state = read_checkpoint_state(checkpoint_dir)
    if state and not resume:
        raise TfdnadetError(f"{run_dir} already holds a training run: pass --resume to continue it, or choose another --out.")
    os.makedirs(run_dir, exist_ok=True)
    selection_dir = os.path.join(run_dir, "best")
    if not state:  # a best epoch kept by a run that stopped before its first checkpoint
        shutil.rmtree(selection_dir, ignore_errors=True)
    keras.utils.set_random_seed(config.train.seed)
    train_dataset = make_train_dataset(state["step"] if state else 0)

    with strategy.scope():
        model = build_training_model(config, class_names, None if state else init_model)
        _build(model, train_dataset)
        if state:
            _load_checkpoint(model, checkpoint_dir, run_dir, config)
    save_config(config, os.path.join(run_dir, "config.yaml"))  # after the checkpoint loaded: a failed resume keeps the record
    val_dataset = _validation_dataset(val_images, config, strategy.num_replicas_in_sync)
    initial_epoch = state["epoch"] if state else 0
    select = selection_mode(config.train.select_on, val_models is not None and len(val_models[1]) > 0)
    generator_validation = GeneratorValidation(
        # judged alike, so the gap between the two shows; without validation models Keras' val_accuracy is enough
        {} if val_models is None else {HELDOUT_IMAGES: val_images, VAL_MODELS: val_models, VAL_MODELS_AUGMENTED: val_models_augmented},
        class_names,
        Preprocessing.from_data_config(config.data),
        config.train.eval_batch_size,
        selection_dir,
        select == VAL_MODELS,
        config.train.patience,
        initial_epoch,
    )

    history_csv = os.path.join(run_dir, "history.csv")
    if state:
        truncate_history(history_csv, initial_epoch)
    guard = StopOnNonFiniteLoss()
    all_callbacks = [
        guard,
        *([AverageOverWorkers(strategy)] if task_count(strategy) > 1 else []),  # before the checkpoint
        generator_validation,  # before the CSV logger and the checkpoint: its accuracies go into the epoch's row
        # The history row goes first: an epoch killed before its checkpoint runs again, and its row is dropped then.
        keras.callbacks.CSVLogger(history_csv, append=bool(state)),
        AtomicCheckpoint(checkpoint_dir),
        TrainingCurves(history_csv, os.path.join(run_dir, "curves.png")),
        *evidence_callbacks(run_dir, val_images, class_names, config),
        *callbacks,
    ]
    history = {}
    stopped_early = bool((read_selection(selection_dir) or {}).get("stopped_early"))
    if initial_epoch < config.train.epochs and not stopped_early:
        fitted = model.fit(
            train_dataset,
            steps_per_epoch=steps_per_epoch,
            epochs=config.train.epochs,
            initial_epoch=initial_epoch,
            validation_data=val_dataset,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # the data set shuffles itself
        )
        history = fitted.history
    if guard.stopped_at is not None:
        good = read_checkpoint_state(checkpoint_dir)
        kept = f"The last good checkpoint (epoch {good['epoch']}) is kept in {checkpoint_dir}" if good else "No epoch finished"
        raise TfdnadetError(
            f"Training stopped: the loss became NaN/inf at step {guard.stopped_at}. {kept}; "
            "lower train.learning_rate or use float32, then --resume."
        )
    final_state = read_checkpoint_state(checkpoint_dir) or {"epoch": 0, "step": 0}
    selection = _keep_selected_epoch(model, select, selection_dir, final_state["epoch"], config)
    info = {**(model_info or {}), "selection": selection}
    model_dir = os.path.join(run_dir, "model")
    detector = Detector(model.backbone, {}, {}, Preprocessing.from_data_config(config.data), {**config.to_dict(), **info})
    detector.add_head(MULTICLASS, model.classifier, {"class_names": list(class_names)})
    save_detector(detector, model_dir)
    if isinstance(model, GFDModel) and model.decoder is not None:
        write_decoder(model_dir, model.decoder)
    write_json(os.path.join(run_dir, "run.json"), {"class_names": list(class_names), **final_state, **info})
    return TrainResult(run_dir, model_dir, final_state["epoch"], final_state["step"], history, selection)


def _load_checkpoint(model: keras.Model, checkpoint_dir: str, run_dir: str, config: Config) -> None:
    """The run's last checkpoint into `model`; a clear error where this config builds another model than the run's."""
    with warnings.catch_warnings(record=True) as skipped:  # Keras warns of each part it leaves freshly initialised
        warnings.simplefilter("always", UserWarning)
        try:
            model.load_weights(os.path.join(checkpoint_dir, CHECKPOINT_WEIGHTS))
            fits = not any("freshly-initialized" in str(warning.message) for warning in skipped)
        except ValueError:
            fits = False
    recorded = os.path.join(run_dir, "config.yaml")
    changed = config_changes(load_config(recorded), config) if os.path.isfile(recorded) else []
    if not fits or any(name.startswith("model.") for name in changed):  # model.input_filter has no weights to misfit
        differs = f" (it differs from the run's in {', '.join(changed[:4])})" if changed else ""
        raise TfdnadetError(
            f"Cannot resume {run_dir}: its checkpoint does not fit the model this config builds{differs}. "
            f"Resume with the run's own config: --config {recorded}"
        ) from None


def _keep_selected_epoch(model: PatchContrastiveModel, select: str, selection_dir: str, epochs_run: int, config: Config) -> dict:
    """Load the chosen epoch's weights into `model` (val_models) and describe the choice; last keeps the model as is."""
    record = {"select_on": select, "epochs_run": epochs_run, "finetune_from_block": config.train.finetune_from_block}
    best = read_selection(selection_dir) if select == VAL_MODELS else None
    if best is None:
        model.optimizer.finalize_variable_values(model.trainable_variables)  # the averaged weights, with ema_momentum
        return {**record, "epoch": epochs_run}
    model.load_weights(os.path.join(selection_dir, BEST_WEIGHTS))
    return {
        **record,
        "epoch": best["epoch"],
        **{f"{name}_accuracy": accuracy for name, accuracy in best.get("judged", {VAL_MODELS: best["accuracy"]}).items()},
        "score_per_epoch": best["accuracies"],  # the mean over the selection sets (selection.SELECTION_SETS)
        "stopped_early": best["stopped_early"],
    }


def _validation_dataset(val_images: Optional[tuple], config: Config, replicas: int) -> Optional[tf.data.Dataset]:
    if val_images is None or len(val_images[1]) < replicas:
        return None
    # Replicas split each batch evenly, so batches are a multiple of their count and a ragged rest is left out.
    batch = max(replicas, min(config.train.eval_batch_size, len(val_images[1])) // replicas * replicas)
    images, labels = val_images
    dataset = make_image_dataset(images, labels, config.data.input_size, batch, drop_remainder=replicas > 1)
    if config.data.predict_on == "whole":
        return dataset
    return dataset.map(lambda x, y: _label_patches(*patch_grid(x, config.data.patch_size), y))


def _label_patches(patches, count, labels) -> tuple:
    """Validation on the patches whose predictions an image's answer averages: each patch keeps its image's label."""
    return patches, tf.repeat(labels, count)


def _build(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Create the model's and its optimizers' variables (before a checkpoint loads into them; GFD-Net: both Adams)."""
    spec = dataset.element_spec[0]
    model(tf.zeros([1, *spec.shape[1:]], spec.dtype))
    if isinstance(model, GFDModel):
        model.build_optimizers()
    else:
        model.optimizer.build(model.trainable_variables)
