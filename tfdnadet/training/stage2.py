"""Stage 2 [4.2]: architecture classification (real + N architectures) with patchwise contrastive learning."""

import functools
import json
import math
import os
from typing import Optional

import numpy as np

from tfdnadet.atomic import write_json
from tfdnadet.config import Config, config_with_overrides, load_config
from tfdnadet.data.perturb import make_augment
from tfdnadet.data.pipeline import LoadedImages, check_classes_present, load_images, make_patch_dataset
from tfdnadet.data.preprocess import min_image_side
from tfdnadet.data.sources import ImageList, read_dataset, split_train_val
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.backbones import CLOSED_FORM, backbone_spec
from tfdnadet.model_metadata import read_metadata
from tfdnadet.training.add_head import train_one_vs_all
from tfdnadet.training.callbacks import read_checkpoint_state
from tfdnadet.training.closed_form import fit_closed_form
from tfdnadet.training.gfd import GFD_LOSS, with_perceptual_init
from tfdnadet.training.resolution import fit_resolution
from tfdnadet.training.distribute import make_strategy
from tfdnadet.training.ensemble import ensemble_stems, member_dir, shared_blocks, split_init, train_alone, train_members, write_ensemble
from tfdnadet.training.selection import HELDOUT_IMAGES, VAL_MODELS, VAL_MODELS_AUGMENTED, augmented_validation, validation_data
from tfdnadet.training.trainer import TrainResult, check_init_filter, fit_patch_model

STEMS_RECORD = "stems.json"  # the stage-1 encoder of each run, as the run began (--resume keeps the order)


def train_stage2(
    data: str,
    run_dir: str,
    config: Config,
    *,
    init_model: Optional[str] = None,
    resume: bool = False,
    verbose: int = 1,
    callbacks: tuple = (),
    on_skipped=None,
    allow_outside_root: bool = False,
    val_data: Optional[str] = None,
    on_member=None,
    on_note=None,
) -> TrainResult:
    """Train the architecture classifier on a folder/manifest; `on_skipped(message)` hears about bad files,
    `on_note(message)` about the resolution chosen from the images (tfdnadet.training.resolution).

    `val_data` holds generator models not in training (a zoo: its validation split; None: the validation split
    of the zoo that `data` belongs to, if any): the kept epoch is chosen on them (train.select_on). With more than
    one run per model (train.runs_per_encoder, or an ensemble --init) each is a run of its own in RUN_DIR/members/
    and RUN_DIR/model averages them (tfdnadet.training.ensemble); `on_member(index, count)` hears as each starts.
    """
    images = read_dataset(data, config.data.class_names, allow_outside_root)
    config, note = fit_resolution(config, images.paths)
    if note and on_note:
        on_note(note)
    if backbone_spec(config.model.backbone).fit == CLOSED_FORM:
        return fit_closed_form(images, data, run_dir, config, on_skipped)
    if init_model:
        check_init_filter(config, init_model)  # before any run starts
    config = config_with_overrides(config.to_dict(), {"train.finetune_from_block": _finetune_from_block(config, init_model, run_dir)})
    make_strategy(config.train.distribution, config.train.devices)  # before any TF op (multi-worker)
    d = config.data
    train_list, val_list = split_train_val(images, d.val_fraction, d.split_seed)
    min_side = min_image_side(d.patch_size, d.base_size)
    train = load_images(train_list, d.base_size, d.max_pixels, min_size=min_side)
    val = load_images(val_list, d.base_size, d.max_pixels, min_size=min_side)
    val_source = validation_data(val_data, data)
    val_models = val_source and _load_val_models(val_source, images.class_names, d, allow_outside_root)
    for loaded in (train, val, val_models):
        if loaded is not None and loaded.failures and on_skipped:
            on_skipped(loaded.failure_summary())
    check_classes_present(train, images.class_names, "training")
    info = {"data_source": os.path.abspath(data), "stage": 2, "init_model": init_model, "val_data": val_source and os.path.abspath(val_source)}
    inits = split_init(init_model, run_dir, only_one=config.train.loss == GFD_LOSS)  # GFD-Net keeps its own decoder
    stems = ensemble_stems(len(inits), config.train.runs_per_encoder)
    val_augmented = augmented_validation(val_models, d.augment)  # once: every run and the ensemble judged alike
    validation = (val_models, val_augmented)
    fit = functools.partial(_fit_classifier, train, (val.images, val.labels), validation, images.class_names, resume=resume, verbose=verbose, callbacks=callbacks)
    if len(stems) == 1:
        result = train_alone(run_dir, config, lambda: fit(run_dir, config, init_model, info))
    else:

        def train_run(path: str, member_config: Config, stem: int) -> TrainResult:
            return fit(path, member_config, inits[stem], {**info, "init_model": inits[stem]})

        stems = _recorded_stems(run_dir, stems)
        stage1_minutes = read_metadata(init_model)["config"].get("train_minutes", 0.0) if init_model else 0.0
        budget = config.train.budget_minutes
        left = None if budget is None else budget - stage1_minutes
        results = train_members(run_dir, config, stems, train_run, on_member, left, always=len(inits))
        if len(results) < len(stems) and on_note:
            on_note(
                f"budget: {len(results)} of {len(stems)} runs fit train.budget_minutes {budget:g} (stage 1 took {stage1_minutes:.1f} of them)\n"
                "(--set train.budget_minutes=null --resume trains the rest)"
            )
        judged = {name: loaded for name, loaded in ((HELDOUT_IMAGES, val), (VAL_MODELS, val_models), (VAL_MODELS_AUGMENTED, val_augmented)) if loaded}
        result = write_ensemble(run_dir, results, stems[: len(results)], shared_blocks(config, bool(init_model)), config, info, judged)
    if config.heads.layout == "one-vs-all":
        # Thresholds and metrics on the validation generators when given: other seeds, not the training ones.
        train_one_vs_all(result.model_dir, train, val_models or val, images.class_names, config, verbose)
    return result


def _recorded_stems(run_dir: str, stems: list) -> list:
    """The runs' stage-1 encoders as the run recorded them when it began (--resume keeps them); a run begun without
    a record (an earlier release) trained each encoder's runs one after another."""
    record = os.path.join(run_dir, STEMS_RECORD)
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            return json.load(f)["stems"]
    if os.path.isdir(member_dir(run_dir, 0)):
        return sorted(stems)
    write_json(record, {"stems": stems})
    return stems


def _fit_classifier(train: LoadedImages, val: tuple, validation: tuple, class_names: list, run_dir: str, config: Config, init_model, info: dict, **fit_options) -> TrainResult:
    """One stage-2 run on decoded images; `validation` is (validation models, the same under data.augment), each
    LoadedImages or None."""
    d = config.data
    steps = config.train.steps_per_epoch or max(1, math.ceil(len(train.labels) / (d.images_per_class * len(class_names))))
    augment = make_augment(d.augment) if d.augment else None
    return fit_patch_model(
        functools.partial(make_patch_dataset, train.images, train.labels, len(class_names), d, config.train.seed, augment),
        steps,
        val,
        class_names,
        with_perceptual_init(config, init_model),
        run_dir,
        init_model=init_model,
        model_info=info,
        val_models=_pair(validation[0]),
        val_models_augmented=_pair(validation[1]),
        **fit_options,
    )


def _pair(loaded: Optional[LoadedImages]) -> Optional[tuple]:
    return loaded and (loaded.images, loaded.labels)


def _finetune_from_block(config: Config, init_model: Optional[str], run_dir: str):
    """Blocks kept as they are come from a pretrained encoder (--init): a random one trains whole. A resumed run
    keeps the value it started with (its config.yaml)."""
    saved = os.path.join(run_dir, "config.yaml")
    if read_checkpoint_state(os.path.join(run_dir, "checkpoint")) and os.path.isfile(saved):
        return load_config(saved).train.finetune_from_block
    return config.train.finetune_from_block if init_model else 0


def _load_val_models(source: str, class_names: list, d, allow_outside_root: bool) -> LoadedImages:
    """Decoded validation-model images labelled in the training classes' order; images of classes not trained on
    (a zoo's architectures held out of training) are left out, since no answer of the model could be right."""
    images = read_dataset(source, d.class_names, allow_outside_root)
    names = np.asarray(images.class_names)[images.labels]
    keep = np.flatnonzero(np.isin(names, class_names)).tolist()
    if not keep:
        raise TfdnadetError(f"--val-data {source} holds none of the training classes ({', '.join(class_names)}).")
    picked = images.subset(keep)
    labels = np.asarray([class_names.index(name) for name in names[keep]], np.int32)
    images = ImageList(picked.paths, labels, list(class_names), picked.groups, picked.splits)
    loaded = load_images(images, d.base_size, d.max_pixels, min_size=min_image_side(d.patch_size, d.base_size))
    if not len(loaded.labels):
        raise TfdnadetError(f"--val-data {source}: no usable images. {loaded.failure_summary()}")
    return loaded
