"""Training an ensemble: member runs in RUN_DIR/members/, each an ordinary run, averaged into RUN_DIR/model.

The runs of an ensemble, ordered by stage-1 encoder, train with seeds train.seed x count + 0, 1, ..., whatever order
they train in, so ensembles of different train.seed values share no member.
A stopped ensemble resumes like a run: finished members are kept, the stopped one continues from its checkpoint.
"""

import dataclasses
import json
import os
import time
from typing import Optional

from tfdnadet.atomic import write_json
from tfdnadet.config import FROZEN_ENCODER, Config, config_with_overrides, save_config
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.ensemble import EnsembleEncoder, assemble
from tfdnadet.models.detector import Detector
from tfdnadet.models.encoder import ENCODER_BLOCKS
from tfdnadet.model_metadata import is_model_dir
from tfdnadet.models.model_dir import load_detector, record_config, save_detector
from tfdnadet.training.distribute import is_chief, make_strategy
from tfdnadet.training.selection import image_accuracy
from tfdnadet.training.trainer import TrainResult

MEMBERS_DIR = "members"
SECONDS_RECORD = "seconds.json"  # a run's training seconds, summed over the calls that resumed it
ENSEMBLE_KNOBS = {"stage1.encoders": 1, "train.runs_per_encoder": 1}


def ensemble_stems(encoders: int, runs_per_encoder: int) -> list:
    """The stage-1 encoder of each run: one run of each encoder, then a second of each, ... (a budget that stops
    early leaves out second runs before it leaves out an encoder)."""
    return [encoder for _ in range(runs_per_encoder) for encoder in range(encoders)]


def train_members(
    run_dir: str,
    config: Config,
    stems: list,
    train_member,
    on_member=None,
    budget_minutes: Optional[float] = None,
    count: Optional[int] = None,
    always: int = 1,
) -> list:
    """One run per entry of `stems` in RUN_DIR/members/run{k}, each a single run with seed train.seed x len(stems) + its
    place among the runs ordered by stage-1 encoder: `train_member(member_run_dir, member_config, stem)` trains it;
    `on_member(index, count)` hears as each starts.

    With `budget_minutes`, a run not finished before starts only while the runs so far, at their mean time, leave
    room for it within the budget; the first `always` runs train regardless. `count` trains only the first `count`
    runs. The runs trained are returned (a prefix of `stems`)."""
    results, seconds = [], []
    by_encoder = sorted(range(len(stems)), key=lambda k: (stems[k], k))
    for member, stem in enumerate(stems[:count]):
        path = member_dir(run_dir, member)
        finished = is_model_dir(os.path.join(path, "model"))
        if budget_minutes is not None and member >= always and not finished:
            spent, mean = sum(seconds), sum(seconds) / len(seconds)
            if spent + mean > 60 * budget_minutes:
                break
        if on_member:
            on_member(member, count or len(stems))
        seed = config.train.seed * len(stems) + by_encoder.index(member)
        member_config = config_with_overrides(config.to_dict(), {**ENSEMBLE_KNOBS, "train.seed": seed})
        started = time.perf_counter()
        results.append(train_member(path, member_config, stem))
        seconds.append(add_seconds(path, time.perf_counter() - started))
    return results


def train_alone(run_dir: str, config: Config, train) -> TrainResult:
    """Train a run without members (`train()` -> TrainResult) and record its minutes in its model, summed over
    resumes, as an ensemble records its members'; in a multi-worker run only the chief, which wrote the model."""
    started = time.perf_counter()
    result = train()
    if is_chief(make_strategy(config.train.distribution, config.train.devices)):
        seconds = add_seconds(run_dir, time.perf_counter() - started)
        record_config(result.model_dir, train_minutes=round(seconds / 60, 2))
    return result


def member_dir(run_dir: str, member: int) -> str:
    """RUN_DIR/members/run{member}."""
    return os.path.join(run_dir, MEMBERS_DIR, f"run{member}")


def member_seconds(member_run_dir: str) -> float:
    """A member run's recorded training seconds (0 before it started)."""
    path = os.path.join(member_run_dir, SECONDS_RECORD)
    if not os.path.isfile(path):
        return 0.0
    with open(path, encoding="utf-8") as f:
        return json.load(f)["seconds"]


def add_seconds(member_run_dir: str, seconds: float) -> float:
    """Add `seconds` to a member run's recorded training time; returns the total."""
    total = member_seconds(member_run_dir) + seconds
    write_json(os.path.join(member_run_dir, SECONDS_RECORD), {"seconds": total})
    return total


def shared_blocks(config: Config, pretrained: bool) -> int:
    """Blocks the runs of one stage-1 encoder keep as it is: those below train.finetune_from_block (none without one)."""
    frozen_below = config.train.finetune_from_block
    if not pretrained:
        return 0
    return len(ENCODER_BLOCKS) if frozen_below in FROZEN_ENCODER else max(0, frozen_below - 1)


def split_init(init_model: Optional[str], run_dir: str, only_one: bool = False) -> list:
    """The stage-1 encoders to fine-tune: an ensemble model's members, each written once as a model directory
    under RUN_DIR/members/ (their runs start from a path), or [init_model] (None: one random encoder). `only_one`
    refuses an ensemble (a method that trains one model)."""
    if init_model is None:
        return [None]
    source = load_detector(init_model)
    if not isinstance(source.backbone, EnsembleEncoder):
        return [init_model]
    if only_one:
        raise TfdnadetError(
            f"--init {init_model} holds {len(source.backbone.stems)} stage-1 encoders and this method trains one model: "
            "give it one of them (train-stage1 writes each encoder's run under RUN/members/)."
        )
    paths = []
    for member in range(len(source.backbone.stems)):
        path = os.path.join(run_dir, MEMBERS_DIR, f"init{member}")
        if not is_model_dir(path):
            save_detector(Detector(source.backbone.member_encoder(member), {}, {}, source.preprocessing, source.config), path)
        paths.append(path)
    return paths


def write_ensemble(run_dir: str, results: list, stems: list, shared_blocks: int, config: Config, info: dict, judged: dict) -> TrainResult:
    """Average the member runs `results` into RUN_DIR/model (one run: its model as it is); the ensemble is judged on
    `judged` ({name: LoadedImages})."""
    members = [load_detector(result.model_dir) for result in results]
    detector = assemble(members, stems, shared_blocks) if len(members) > 1 else members[0]
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=detector.precision))  # not "auto"
    selection = {
        "select_on": results[0].selection.get("select_on"),
        "members": len(results),
        "epochs": [result.selection.get("epoch") for result in results],
        **{f"{name}_accuracy": image_accuracy(detector, loaded, config.train.eval_batch_size) for name, loaded in judged.items() if len(loaded.labels)},
    }
    minutes = round(sum(member_seconds(result.run_dir) for result in results) / 60, 2)  # a stage-2 budget counts stage 1's
    detector.config = {**detector.config, **config.to_dict(), **info, "selection": selection, "train_minutes": minutes}
    model_dir = os.path.join(run_dir, "model")
    save_detector(detector, model_dir)
    save_config(config, os.path.join(run_dir, "config.yaml"))
    runs = [os.path.relpath(result.run_dir, run_dir) for result in results]
    record = {"class_names": detector.class_names, "members": runs, **info, "selection": selection, "train_minutes": minutes}
    write_json(os.path.join(run_dir, "run.json"), record)
    epochs = max(result.epochs_completed for result in results)
    return TrainResult(run_dir, model_dir, epochs, sum(result.steps for result in results), {}, selection)

