"""Stage 1 [4.1]: pretrain the encoder on image-transformation classification with patchwise contrastive learning."""

import functools
import json
import math
import os
from typing import Optional

import numpy as np

from tfdnadet.atomic import write_json
from tfdnadet.config import Config, config_with_overrides
from tfdnadet.data.images import IMAGE_EXTENSIONS, ImageError, decode_image
from tfdnadet.data.sources import list_image_files
from tfdnadet.data.transforms import TransformBank, make_transform_dataset, transform_images
from tfdnadet.errors import TfdnadetError
from tfdnadet.wording import counted
from tfdnadet.training.callbacks import read_checkpoint_state
from tfdnadet.training.distribute import make_strategy
from tfdnadet.training.ensemble import member_dir, member_seconds, train_alone, train_members, write_ensemble
from tfdnadet.training.trainer import TrainResult, fit_patch_model
from tfdnadet.zoo.photos import load_photos, random_crops

BUILTIN_PHOTOS = "built-in photos (scikit-image, scikit-learn)"
DATA_RECORD = "stage1_data.json"  # the photos a run started on, so --resume continues on them
PLAN_RECORD = "stage1_plan.json"  # the encoders and epochs the budget chose, so --resume keeps them
# One stage-2 run of the cpu config takes about as long as 3.4 stage-1 epochs (two runs: 0.28 x a 24-epoch encoder).
STAGE2_RUN_EPOCHS = 3.4


def train_stage1(
    data: Optional[str],
    run_dir: str,
    config: Config,
    *,
    resume: bool = False,
    verbose: int = 1,
    callbacks: tuple = (),
    on_skipped=None,
    on_member=None,
    on_note=None,
) -> TrainResult:
    """Pretrain on transformed crops of the photos in `data` (None: the built-in photos); writes RUN_DIR/model.

    With stage1.encoders > 1 each encoder is a run of its own in RUN_DIR/members/ and RUN_DIR/model holds those
    trained within stage1.budget_minutes (tfdnadet.training.ensemble): with stage1.min_epochs, the first encoder's
    first min_epochs epochs are timed, and where more encoders of min_epochs would fit than of stage1.epochs, those
    are trained (`plan_encoders`). `on_member(index, count)` hears as each starts, `on_note(message)` when the
    budget shortens encoders or leaves some out.
    """
    s = config.stage1
    if s.encoders == 1:
        return train_alone(run_dir, config, lambda: _train_encoder(data, run_dir, config, resume, verbose, callbacks, on_skipped))
    timed = set()  # the run timed for the plan, which goes on without --resume

    def train_encoder(path: str, member_config: Config, stem: int) -> TrainResult:
        return _train_encoder(data, path, member_config, resume or path in timed, verbose, callbacks, on_skipped)

    stems, count, budget = list(range(s.encoders)), None, s.budget_minutes
    plan = _plan(run_dir, config, stems, train_encoder, on_member, on_note)
    if plan is not None:
        timed.add(member_dir(run_dir, 0))
        if plan[1] != stage1_epochs(config):  # shorter encoders: as many as the plan chose, no further cut
            count, budget = plan[0], None
            config = config_with_overrides(config.to_dict(), {"stage1.epochs": plan[1]})
        on_member = _announce_after_first(on_member)
    results = train_members(run_dir, config, stems, train_encoder, on_member, budget, count)
    if len(results) < (count or s.encoders) and on_note:
        on_note(
            f"budget: {len(results)} of {s.encoders} encoders fit stage1.budget_minutes {s.budget_minutes:g} on this machine\n"
            "(--set stage1.budget_minutes=null --resume trains the rest)"
        )
    return write_ensemble(run_dir, results, list(range(len(results))), 0, config, {"stage": 1}, {})  # each its own encoder


def stage1_epochs(config: Config) -> int:
    return config.stage1.epochs if config.stage1.epochs is not None else config.train.epochs


def plan_encoders(epoch_seconds: float, config: Config) -> tuple:
    """(encoders, epochs) of stage 1 within stage1.budget_minutes at `epoch_seconds` an epoch on this machine.

    All encoders at stage1.epochs when they fit; else more encoders of stage1.min_epochs when that fits more of them
    in the minutes the longer ones and their stage-2 runs would take (shorter encoders leave stage 2 as long); else
    as many at stage1.epochs as fit (at least one).
    """
    s, runs = config.stage1, config.train.runs_per_encoder
    budget, epochs = 60 * s.budget_minutes, stage1_epochs(config)
    full = max(1, min(s.encoders, int(budget // (epochs * epoch_seconds))))
    if full == s.encoders or s.min_epochs is None or s.min_epochs >= epochs:
        return full, epochs
    stage2 = STAGE2_RUN_EPOCHS * runs * epoch_seconds  # one encoder's stage-2 runs
    short = min(s.encoders, int((budget + full * stage2) // (s.min_epochs * epoch_seconds + stage2)))
    return (short, s.min_epochs) if short > full else (full, epochs)


def _plan(run_dir: str, config: Config, stems: list, train_encoder, on_member, on_note) -> Optional[tuple]:
    """Train the first encoder for stage1.min_epochs, time it and choose (encoders, epochs), recorded for --resume;
    None where the budget cannot shorten encoders, or for a run begun without a plan (it keeps its epochs)."""
    s = config.stage1
    if s.budget_minutes is None or s.min_epochs is None or s.min_epochs >= stage1_epochs(config):
        return None
    record = os.path.join(run_dir, PLAN_RECORD)
    plan = _read_json(record)
    if plan is None and read_checkpoint_state(os.path.join(member_dir(run_dir, 0), "checkpoint")) is not None:
        return None
    if plan is None or "encoders" not in plan:
        write_json(record, {"probe_epochs": s.min_epochs})  # a stop during the probe resumes the probe
        probe = config_with_overrides(config.to_dict(), {"stage1.epochs": s.min_epochs})
        announce = None if on_member is None else (lambda member, count: on_member(member, len(stems)))
        train_members(run_dir, probe, stems, train_encoder, announce, count=1)
        epoch_seconds = member_seconds(member_dir(run_dir, 0)) / s.min_epochs
        encoders, epochs = plan_encoders(epoch_seconds, config)
        plan = {"encoders": encoders, "epochs": epochs, "epoch_seconds": epoch_seconds}
        write_json(record, plan)
        if epochs != stage1_epochs(config) and on_note:
            hours = s.encoders * stage1_epochs(config) * epoch_seconds / 3600
            on_note(
                f"budget: {counted(encoders, 'encoder')} of {counted(epochs, 'epoch')} fit stage1.budget_minutes {s.budget_minutes:g} on this machine\n"
                f"({s.encoders} of {stage1_epochs(config)} epochs: {hours:.1f} hours; --set stage1.min_epochs=null keeps {stage1_epochs(config)})"
            )
    return plan["encoders"], plan["epochs"]


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _announce_after_first(on_member):
    """`on_member` for the encoders after the first (the probe announced it)."""
    if on_member is None:
        return None

    def announce(member: int, count: int) -> None:
        if member > 0:
            on_member(member, count)

    return announce


def _train_encoder(data: Optional[str], run_dir: str, config: Config, resume: bool, verbose: int, callbacks: tuple, on_skipped) -> TrainResult:
    make_strategy(config.train.distribution, config.train.devices)  # before any TF op (multi-worker)
    d, s = config.data, config.stage1
    # The pretraining trains the whole encoder; train.finetune_from_block is about fine-tuning it in stage 2.
    overrides = {"train.finetune_from_block": 0, **({"train.epochs": s.epochs} if s.epochs is not None else {})}
    config = config_with_overrides(config.to_dict(), overrides)
    bank = TransformBank(s.transforms, d.base_size)
    data = _run_data(data, run_dir, resume)
    crops = natural_crops(data, s.crops, d.base_size, config.train.seed, d.max_pixels, on_skipped)
    if read_checkpoint_state(os.path.join(run_dir, "checkpoint")) is None:
        write_json(os.path.join(run_dir, DATA_RECORD), {"data": os.path.abspath(data) if data else None})
    held_out = int(len(crops) * d.val_fraction)
    train_crops, val_crops = crops[held_out:], crops[:held_out]
    val_labels = np.arange(held_out, dtype=np.int32) % len(bank)
    validation = (transform_images(val_crops, val_labels, bank), val_labels) if held_out else None
    steps = config.train.steps_per_epoch or max(1, math.ceil(len(train_crops) / (s.images_per_class * len(bank))))
    return fit_patch_model(
        functools.partial(make_transform_dataset, train_crops, bank, d, s.images_per_class, config.train.seed),
        steps,
        validation,
        bank.class_names,
        config,
        run_dir,
        resume=resume,
        verbose=verbose,
        callbacks=callbacks,
        model_info={"data_source": os.path.abspath(data) if data else BUILTIN_PHOTOS, "stage": 1},
    )


def _run_data(data: Optional[str], run_dir: str, resume: bool) -> Optional[str]:
    """The photos to train on: a resumed run keeps the ones it started with (--data may be left out)."""
    record = _read_json(os.path.join(run_dir, DATA_RECORD))
    if not resume or record is None:
        return data
    started_with = record["data"]
    if data is not None and os.path.abspath(data) != started_with:
        raise TfdnadetError(
            f"{run_dir} started on {started_with or BUILTIN_PHOTOS}, not {os.path.abspath(data)}: resume it on the same photos, or choose another --out."
        )
    return started_with


def natural_crops(data: Optional[str], count: int, size: int, seed: int, max_pixels: int, on_skipped=None) -> np.ndarray:
    """`count` random size x size uint8 crops of the photos in a folder, or of the built-in photos when None.

    Crops are spread evenly over the photos of a folder, visited in a seeded random order and decoded one at a
    time, so a large folder is never held in memory; with more photos than crops, a random subset is read.
    """
    if data is None:
        return random_crops(list(load_photos()), count, size, seed)
    paths = _photo_files(data)
    order = np.random.default_rng(seed).permutation(len(paths))
    crops, failures, needed, photo = [], [], count, None
    for position, index in enumerate(order):
        if needed == 0:
            break
        try:
            photo = decode_image(paths[index], max_pixels, min_size=size)
        except ImageError as exc:
            failures.append((paths[index], str(exc)))
            continue
        share = math.ceil(needed / (len(paths) - position))  # photos that fail raise the share of those after them
        crops.append(random_crops([photo], share, size, seed + int(index)))
        needed -= share
    if needed and photo is not None:  # the last photos failed: the last good one makes up the rest
        crops.append(random_crops([photo], needed, size, seed))
    if not crops:
        raise TfdnadetError(f"No usable photos in {data}: none of {counted(len(paths), 'file')} could be used, e.g. {failures[0][0]}: {failures[0][1]}")
    if failures and on_skipped:
        on_skipped(f"skipped {counted(len(failures), 'unusable photo')}, e.g. {failures[0][0]}: {failures[0][1]}")
    return np.concatenate(crops)


def _photo_files(data: str) -> list:
    if not os.path.isdir(data):
        raise TfdnadetError(f"--data {data}: no such folder (give a folder of natural photos, or leave --data out for the built-in ones).")
    paths = list_image_files(data)
    if not paths:
        raise TfdnadetError(f"--data {data}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    return paths
