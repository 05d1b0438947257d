"""The Table 2 protocol over the knobs that decide generalization, chosen on validation generator models.

Each point is `--config` (default cpu) with a few settings changed: stage 1 on the built-in photos, stage 2 on the
zoo's train split with its epoch chosen on one half of the zoo's `validation` split (generator models of their own,
split by model) and its validation figure from the other half (run 1 chooses on A, run 2 on B, ...), then accuracy
on the five test splits, which choose nothing. Points with the same stage-1 settings share one stage-1
run; train minutes count stage 1 + stage 2 (validation included) on this machine. Runs live in --work and finished
points in OUT.json, so a stopped sweep resumes where it was; `--points` runs a subset; `--repeats N` trains N
stage-2 runs per point (seeds train.seed, +1, ...) and reports their mean, as one run's figures swing by several points. The best point is the one
with the highest validation accuracy within --budget minutes; OUT.png plots the mean of cross-seed,
cross-finetune and cross-dataset against train minutes (Pareto front drawn, best point starred).

    python benchmarks/sweep.py --zoo ZOO_DIR [--config cpu] [--points bf16,bf16-frozen] [--budget 60]
                               [--work DIR] [--out PREFIX] [--repeats N] [--set section.key=value ...]
"""

import argparse
import csv
import hashlib
import json
import os
import sys
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import yaml  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import Config, config_from_dict, load_config  # noqa: E402
from tfdnadet.data.perturb import ATTACKS, table5_augment  # noqa: E402
from tfdnadet.data.transforms import UPSAMPLE_LAYERS  # noqa: E402
from tfdnadet.errors import TfdnadetError  # noqa: E402
from tfdnadet.evaluation.evaluate import evaluate_dataset  # noqa: E402
from tfdnadet.evaluation.protocol import evaluate_protocol, protocol_summary  # noqa: E402
from tfdnadet.evaluation.robustness import robustness_table  # noqa: E402
from tfdnadet.model_metadata import read_metadata  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.plots import plt, save_figure  # noqa: E402
from tfdnadet.training.stage1 import train_stage1  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.build import TRAIN_SPLIT, VALIDATION_SPLIT, read_zoo  # noqa: E402

HARD_SPLITS = ("cross-seed", "cross-finetune", "cross-dataset")
BF16 = {"train.precision": "mixed_bfloat16"}  # ~1.6x float32's speed on this CPU (AVX512_BF16)
HIGHPASS = {"model.input_filter": "highpass"}
AUGMENT = table5_augment()  # [5.5] Khoo et al. 3.3
AUGMENT_LIGHT = [{**op, "p": 0.2} for op in AUGMENT]  # a third of the images stay clean (0.8 ** 5)
# the cpu bank plus 4 classes of generator upsampling layers with random weights (tfdnadet.data.transforms.random_upsample)
UPSAMPLE_BANK = {**load_config("cpu").stage1.transforms, "upsample": list(UPSAMPLE_LAYERS)}
# name -> (settings of both stages, settings of stage 2 only), over --config. Stage 2 keeps its best epoch on the
# validation models, so longer runs cannot overfit the training generators unseen; frozen or top-block fine-tuning
# keeps more of the transformation-pretrained encoder.
POINTS = {
    "cpu": ({}, {}),
    "bf16": (BF16, {}),
    "bf16-frozen": (BF16, {"train.finetune_from_block": "frozen"}),
    "bf16-top4": (BF16, {"train.finetune_from_block": 5}),
    "bf16-top2": (BF16, {"train.finetune_from_block": 7}),
    "bf16-epochs16": (BF16, {"train.epochs": 16}),
    "bf16-top4-epochs16": (BF16, {"train.finetune_from_block": 5, "train.epochs": 16}),
    "bf16-ema": (BF16, {"train.ema_momentum": 0.99}),  # [Cha et al. 2021] averaged weights generalize across domains
    "bf16-ema-epochs16": (BF16, {"train.ema_momentum": 0.99, "train.epochs": 16}),
    "bf16-augment-ema-epochs24": (BF16, {"data.augment": AUGMENT, "train.ema_momentum": 0.99, "train.epochs": 24}),
    "bf16-augment0.2": (BF16, {"data.augment": AUGMENT_LIGHT}),
    "bf16-augment0.2-ema-epochs16": (BF16, {"data.augment": AUGMENT_LIGHT, "train.ema_momentum": 0.99, "train.epochs": 16}),
    "bf16-whole": (BF16, {"data.predict_on": "whole"}),
    "bf16-augment": (BF16, {"data.augment": AUGMENT}),
    "bf16-top4-augment": (BF16, {"train.finetune_from_block": 5, "data.augment": AUGMENT}),
    "bf16-full-augment": (BF16, {"train.finetune_from_block": 0, "data.augment": AUGMENT}),
    "bf16-augment-epochs16": (BF16, {"data.augment": AUGMENT, "train.epochs": 16}),
    "bf16-augment-epochs24": (BF16, {"data.augment": AUGMENT, "train.epochs": 24}),
    "bf16-patches16": (BF16, {"data.patches_per_image": 16}),
    "bf16-k16": (BF16, {"data.images_per_class": 16}),
    "bf16-k32": (BF16, {"data.images_per_class": 32}),  # the paper's k
    # the learning rate x0.6 every 34 steps (an epoch of small at k = 8: 1e-3 -> 3e-5 by epoch 8), so late epochs settle
    "bf16-decay-per-epoch": (BF16, {"train.decay_steps": 34, "train.decay_rate": 0.6}),
    # one run, as before ensembles; ensembles (tfdnadet.models.ensemble): 4 stage-2 runs of one stage-1 encoder, or 2
    # runs of each of 2
    "bf16-one-run": ({**BF16, "stage1.encoders": 1}, {"train.runs_per_encoder": 1}),
    "bf16-ensemble1x4": (BF16, {"train.runs_per_encoder": 4}),
    "bf16-ensemble2x2": ({**BF16, "stage1.encoders": 2}, {"train.runs_per_encoder": 2}),
    "bf16-ensemble2x2-augment0.2": ({**BF16, "stage1.encoders": 2}, {"train.runs_per_encoder": 2, "data.augment": AUGMENT_LIGHT}),
    # more stage-1 encoders of half the epochs: 5, 7 or 8 of 24 epochs, one or two stage-2 runs each
    "bf16-ensemble5x1-stage1-24ep": ({**BF16, "stage1.encoders": 5, "stage1.epochs": 24}, {"train.runs_per_encoder": 1}),
    "bf16-ensemble5x2-stage1-24ep": ({**BF16, "stage1.encoders": 5, "stage1.epochs": 24}, {"train.runs_per_encoder": 2}),
    "bf16-ensemble7x1-stage1-24ep": ({**BF16, "stage1.encoders": 7, "stage1.epochs": 24}, {"train.runs_per_encoder": 1}),
    "bf16-ensemble7x2-stage1-24ep": ({**BF16, "stage1.encoders": 7, "stage1.epochs": 24}, {"train.runs_per_encoder": 2}),
    "bf16-ensemble8x2-stage1-24ep": ({**BF16, "stage1.encoders": 8, "stage1.epochs": 24}, {"train.runs_per_encoder": 2}),
    # the config's own precision (auto); training images mirrored about the diagonal (exactly the output of the same
    # architecture with transposed kernels) or by any of the square's eight symmetries (flips are not exact so), or
    # colour channels reordered and inverted (exactly the output of the same architecture with its RGB layer so changed)
    "ensemble2x2-stage1-24ep": ({"stage1.encoders": 2, "stage1.epochs": 24}, {"train.runs_per_encoder": 2}),
    "ensemble2x2-stage1-24ep-transpose": (
        {"stage1.encoders": 2, "stage1.epochs": 24}, {"train.runs_per_encoder": 2, "data.augment": [{"op": "transpose", "p": 0.5}]}
    ),
    "ensemble2x2-stage1-24ep-symmetry": (
        {"stage1.encoders": 2, "stage1.epochs": 24}, {"train.runs_per_encoder": 2, "data.augment": [{"op": "symmetry"}]}
    ),
    "ensemble2x2-stage1-24ep-channels": (
        {"stage1.encoders": 2, "stage1.epochs": 24}, {"train.runs_per_encoder": 2, "data.augment": [{"op": "channels", "p": 0.5}]}
    ),
    # the encoder sees the image's noise residual (model.input_filter: highpass), both stages
    "ensemble2x2-stage1-24ep-highpass": ({**HIGHPASS, "stage1.encoders": 2, "stage1.epochs": 24}, {"train.runs_per_encoder": 2}),
    "ensemble2x2-stage1-24ep-highpass-transpose": (
        {**HIGHPASS, "stage1.encoders": 2, "stage1.epochs": 24}, {"train.runs_per_encoder": 2, "data.augment": [{"op": "transpose", "p": 0.5}]}
    ),
    "bf16-ensemble3x2-stage1-24ep-upsample": (
        {**BF16, "stage1.encoders": 3, "stage1.epochs": 24, "stage1.transforms": UPSAMPLE_BANK}, {"train.runs_per_encoder": 2}
    ),
    "bf16-width0.5": ({**BF16, "model.width": 0.5}, {}),
    "bf16-x1": ({**BF16, "data.input_size": 64}, {}),  # no upsampling: a 2x2 grid of 32 px patches
    "bf16-x4-p64": ({**BF16, "data.input_size": 256, "data.patch_size": 64}, {}),  # the paper's x4, crop ratio 1/4
    # the paper's 170 transformation classes, 2 crops each per step (4 x 170 would be a 680-image step here)
    "bf16-bank170": ({**BF16, "stage1.transforms": None, "stage1.images_per_class": 2}, {}),
    "bf16-stage1-48ep": ({**BF16, "stage1.epochs": 48}, {}),
    "bf16-stage1-48ep-augment": ({**BF16, "stage1.epochs": 48}, {"data.augment": AUGMENT}),
}
VALIDATION_HALVES = ("A", "B")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, help="a zoo directory (or its zoo.json) with a validation split")
    parser.add_argument("--config", default="cpu", help="the config every point starts from")
    parser.add_argument("--points", default=",".join(POINTS), help=f"comma-separated points of: {', '.join(POINTS)}")
    parser.add_argument("--budget", type=float, default=60.0, help="minutes of stage 1 + stage 2 a chosen point may take")
    parser.add_argument("--work", default="sweep_work", help="stage-1 and stage-2 runs (kept, so a rerun resumes)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "sweep"), help="writes OUT.json and OUT.png")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="section.key=value for every point (YAML value)")
    parser.add_argument("--stage1-from", action="append", default=[], help="a finished stage-1 run directory to use for the points with its settings (repeatable)")
    parser.add_argument("--repeats", type=int, default=1, help="stage-2 runs per point (train.seed, +1, ...); figures are their mean")
    parser.add_argument("--verbose", type=int, default=2, help="Keras verbosity of the training runs")
    return parser.parse_args(argv)


def with_settings(config: Config, settings: dict) -> Config:
    """`config` with dotted settings applied (a null value sets null, e.g. stage1.transforms: the paper's bank)."""
    values = config.to_dict()
    for dotted, value in settings.items():
        section, _, key = dotted.partition(".")
        values[section][key] = value
    return config_from_dict(values)


def same_config(recorded, config: Config) -> bool:
    """Whether a recorded config dict is `config`, settings added since it was recorded taking their defaults."""
    try:
        return recorded is not None and config_from_dict(recorded).to_dict() == config.to_dict()
    except TfdnadetError:  # a setting that no longer exists
        return False


def config_key(config: Config) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def stage1_key(config: Config) -> str:
    """The key of the config a stage-1 run records in its config.yaml (its train.epochs is stage1.epochs), with the
    settings stage 1 does not use left out (it always trains the whole encoder)."""
    # data.images_per_class is stage 2's k (stage 1 batches stage1.images_per_class); runs_per_encoder is stage 2's
    settings = {"train.finetune_from_block": 0, "data.images_per_class": 1, "train.runs_per_encoder": 1, **({"train.epochs": config.stage1.epochs} if config.stage1.epochs else {})}
    return config_key(with_settings(config, settings))


def finished_stage1_runs(run_dirs: list) -> dict:
    """{stage-1 key: (model directory, seconds)} of finished stage-1 runs given by --stage1-from."""
    runs = {}
    for run_dir in run_dirs:
        model_dir = os.path.join(run_dir, "model")
        if not os.path.isfile(os.path.join(model_dir, "detector.json")):
            raise TfdnadetError(f"--stage1-from {run_dir}: not a finished run (no model/detector.json).")
        runs[stage1_key(load_config(os.path.join(run_dir, "config.yaml")))] = (model_dir, run_seconds(run_dir))
    return runs


def trained(run_dir: str, train) -> tuple:
    """(model directory, seconds it took to train): a finished run is reused, otherwise trained or resumed now."""
    os.makedirs(run_dir, exist_ok=True)
    model_dir = os.path.join(run_dir, "model")
    if not os.path.isfile(os.path.join(model_dir, "detector.json")):
        train(run_dir)
    return model_dir, run_seconds(run_dir)


def run_seconds(run_dir: str) -> float:
    """Seconds a finished run trained: the train_minutes its model records (summed over the calls that resumed it);
    for a run from before models recorded them, its seconds.json, else from its start to the writing of its model."""
    model_dir = os.path.join(run_dir, "model")
    minutes = read_metadata(model_dir)["config"].get("train_minutes")
    if minutes is not None:
        return 60 * minutes
    seconds = read_json(os.path.join(run_dir, "seconds.json"), {"seconds": None})["seconds"]
    if seconds is None:
        started = next(os.path.join(run_dir, name) for name in ("stage1_data.json", "config.yaml") if os.path.isfile(os.path.join(run_dir, name)))
        seconds = os.path.getmtime(os.path.join(model_dir, "detector.json")) - os.path.getmtime(started)
    return seconds


def read_json(path: str, default):
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_point(name: str, base: Config, zoo: dict, work: str, verbose: int, stage1_runs: dict, repeats: int, halves: list, earlier=None) -> dict:
    """Stage 1 (shared) and `repeats` stage-2 runs (train.seed, +1, ...) of a point, scored (`halves`: the validation
    manifests of `validation_halves`); the runs of an earlier record of the point are kept and only the missing ones trained."""
    both, stage2_only = POINTS[name]
    stage1_config = with_settings(base, both)
    key = stage1_key(stage1_config)
    progress(f"{name}: stage 1 (settings {key}, shared by points with the same stage-1 settings)")
    stage1, stage1_seconds = stage1_runs.get(key) or trained(
        os.path.join(work, "stage1", key), lambda run: train_stage1(None, run, stage1_config, resume=True, verbose=verbose)
    )
    runs = earlier_runs(earlier)
    for repeat in range(repeats):
        config = with_settings(stage1_config, {**stage2_only, "train.seed": base.train.seed + repeat})
        run_dir = os.path.join(work, "stage2", f"{name}-{config_key(config)}")
        if repeat < len(runs):
            if "robustness" not in runs[repeat]:  # scored before the sweep measured attacks
                runs[repeat]["robustness"] = closed_set_robustness(load_detector(os.path.join(run_dir, "model")), zoo, config.train.eval_batch_size)
            continue
        progress(f"{name}: stage 2, run {repeat + 1}/{repeats} (epoch chosen on one half of the validation split)")
        runs.append(stage2_run(config, stage1, zoo, run_dir, verbose, halves, repeat))
    return point_summary(both, stage2_only, {"run": os.path.abspath(os.path.dirname(stage1)), "settings_key": key, "minutes": stage1_seconds / 60}, runs)


def earlier_runs(point) -> list:
    """The stage-2 runs of a point's record (a record from before repeats held one run in its own fields)."""
    if not point:
        return []
    return point.get("runs") or [{k: point[k] for k in ("stage2_minutes", "selection", "validation", "splits", "robustness") if k in point}]


def validation_halves(zoo: dict, work: str) -> list:
    """Two manifests (absolute paths) that split the zoo's validation split by generator model: within each class
    its models alternate between the halves (a class of one model alternates its images)."""
    with open(os.path.join(zoo["root"], zoo["splits"][VALIDATION_SPLIT]["manifest"]), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    models = {}
    for row in rows:
        models.setdefault(row["label"], {}).setdefault(row["group"], []).append(row)
    halves = [[], []]
    os.makedirs(work, exist_ok=True)
    for groups in models.values():
        members = [[row] for rows_of in groups.values() for row in rows_of] if len(groups) == 1 else [groups[g] for g in sorted(groups)]
        for index, member in enumerate(members):
            halves[index % 2] += member
    paths = []
    for name, half in zip(VALIDATION_HALVES, halves):
        path = os.path.join(work, f"validation_{name}.csv")
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**row, "path": os.path.join(zoo["root"], row["path"])} for row in half)
        paths.append(path)
    return paths


def stage2_run(config: Config, stage1: str, zoo: dict, run_dir: str, verbose: int, halves: list, repeat: int) -> dict:
    """Train and score one stage-2 run: its epoch chosen on validation half `repeat` % 2, its validation figure from
    the other half, so the choice does not flatter it (the best epoch of a noisy curve scores high by luck)."""
    train_csv = os.path.join(zoo["root"], zoo["splits"][TRAIN_SPLIT]["manifest"])
    chosen_on, scored_on = halves[repeat % 2], halves[1 - repeat % 2]
    model_dir, seconds = trained(
        run_dir,
        lambda run: train_stage2(
            train_csv, run, config, init_model=stage1, resume=True, verbose=verbose, val_data=chosen_on, allow_outside_root=True
        ),
    )
    progress(f"{os.path.basename(run_dir)}: scoring the validation and test splits")
    detector = load_detector(model_dir)
    validation = evaluate_dataset(detector, scored_on, config.train.eval_batch_size, allow_outside_root=True)
    return {
        "run": os.path.abspath(run_dir),
        "stage2_minutes": seconds / 60,
        "selection": detector.config.get("selection", {}),
        "validation": {
            "accuracy": validation["accuracy"],
            "macro_f1": validation["macro_f1"],
            "count": validation["count"],
            "chosen_on": os.path.basename(chosen_on),
            "scored_on": os.path.basename(scored_on),
        },
        "splits": protocol_summary(evaluate_protocol(detector, zoo["root"], config.train.eval_batch_size)),
        "robustness": closed_set_robustness(detector, zoo, config.train.eval_batch_size),
    }


def point_summary(both: dict, stage2_only: dict, stage1: dict, runs: list) -> dict:
    """A point's record: the mean over its stage-2 runs of every figure, the runs themselves under `runs`."""

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    splits = {s: {m: mean(r["splits"][s][m] for r in runs) for m in ("accuracy", "macro_f1")} | {"count": runs[0]["splits"][s]["count"]} for s in runs[0]["splits"]}
    hard = [splits[s]["accuracy"] for s in HARD_SPLITS if s in splits]
    stage2_minutes = mean(r["stage2_minutes"] for r in runs)
    return {
        "settings": {"both_stages": both, "stage2": stage2_only},
        "stage1": stage1,
        "stage2_minutes": stage2_minutes,
        "train_minutes": stage1["minutes"] + stage2_minutes,
        "validation": {m: mean(r["validation"][m] for r in runs) for m in ("accuracy", "macro_f1")},
        "splits": splits,
        "hard_mean": mean(hard) if hard else None,
        "robustness": {a: mean(r["robustness"][a] for r in runs) for a in runs[0]["robustness"]},
        "repeats": len(runs),
        "runs": runs,
    }


def closed_set_robustness(detector, zoo: dict, batch_size: int) -> dict:
    """Closed-set accuracy under each Table 5 attack and their combination (seed 0), {attack: accuracy}."""
    closed = os.path.join(zoo["root"], zoo["splits"]["closed-set"]["manifest"])
    scores = robustness_table(detector, {"closed-set": closed}, list(ATTACKS), seed=0, batch_size=batch_size)["rows"]["closed-set"]["scores"]
    return {attack: scores[attack]["accuracy"] for attack in ATTACKS}


def best_on_validation(points: dict, budget: float):
    """The point with the highest validation accuracy among those within the budget, the faster on a tie (test
    splits play no part)."""
    within = {name: p for name, p in points.items() if p["train_minutes"] <= budget}
    return max(within, key=lambda name: (within[name]["validation"]["accuracy"], -within[name]["train_minutes"])) if within else None


def pareto_front(points: dict) -> list:
    """Points no other point beats on both train minutes (fewer) and the hard-split mean (higher), fastest first."""
    ordered = sorted((p["train_minutes"], -p["hard_mean"], name) for name, p in points.items() if p["hard_mean"] is not None)
    front, best = [], -1.0
    for minutes, negative_mean, name in ordered:
        if -negative_mean > best:
            front.append(name)
            best = -negative_mean
    return front


def plot_pareto(points: dict, front: list, best, budget: float, path: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, p in points.items():
        if p["hard_mean"] is None:
            continue
        ax.scatter(p["train_minutes"], 100 * p["hard_mean"], color="tab:blue", zorder=3)
        ax.annotate(name, (p["train_minutes"], 100 * p["hard_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([points[n]["train_minutes"] for n in front], [100 * points[n]["hard_mean"] for n in front], color="tab:orange", label="Pareto front")
    if best is not None and points[best]["hard_mean"] is not None:
        ax.scatter(points[best]["train_minutes"], 100 * points[best]["hard_mean"], marker="*", s=250, color="tab:red", zorder=4, label=f"best on validation: {best}")
    ax.axvline(budget, color="grey", linestyle="--", label=f"budget {budget:g} min")
    ax.set_xlabel("train minutes (stage 1 + stage 2)")
    ax.set_ylabel("mean accuracy %: " + ", ".join(HARD_SPLITS))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def progress(message: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = [n for n in args.points.split(",") if n]
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        sys.exit(f"Unknown point(s): {', '.join(unknown)}. Known: {', '.join(POINTS)}")
    zoo = read_zoo(args.zoo)
    if VALIDATION_SPLIT not in zoo["splits"]:
        raise TfdnadetError(f"The zoo at {zoo['root']} has no {VALIDATION_SPLIT} split: rebuild it with `tfdnadet zoo build` (finished models are kept).")
    # every point trains all its stage-1 encoders at their epochs and all its runs, whatever this machine's speed (no budget)
    no_budget = {"stage1.budget_minutes": None, "stage1.min_epochs": None, "train.budget_minutes": None}
    settings = {"data.base_size": zoo["image_size"], **no_budget, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}}
    base = with_settings(load_config(args.config), settings)
    stage1_runs = finished_stage1_runs(args.stage1_from)
    report = read_json(f"{args.out}.json", {})
    # points chosen and scored on the whole validation split (before the halves) are not comparable: dropped
    same_sweep = report.get("zoo") == os.path.abspath(zoo["root"]) and same_config(report.get("base_config"), base) and report.get("validation") == "halves"
    points = report.get("points", {}) if same_sweep else {}
    halves = validation_halves(zoo, args.work)
    for number, name in enumerate(names, 1):
        same = name in points and points[name]["settings"] == {"both_stages": POINTS[name][0], "stage2": POINTS[name][1]}
        earlier = points[name] if same else None
        if earlier and len(earlier_runs(earlier)) >= args.repeats and "robustness" in earlier:
            progress(f"[{number}/{len(names)}] {name}: finished earlier, kept")
            continue
        progress(f"[{number}/{len(names)}] {name}")
        points[name] = run_point(name, base, zoo, args.work, args.verbose, stage1_runs, args.repeats, halves, earlier)
        p = points[name]
        progress(
            f"{name}: {p['train_minutes']:.1f} min, validation {100 * p['validation']['accuracy']:.1f}, "
            + ", ".join(f"{s} {100 * m['accuracy']:.1f}" for s, m in p["splits"].items())
        )
        report = {"zoo": os.path.abspath(zoo["root"]), "validation": "halves", "config": args.config, "settings": settings, "base_config": base.to_dict(), "budget_minutes": args.budget, "points": points}
        write_json(f"{args.out}.json", report)
    best = best_on_validation(points, args.budget)
    front = pareto_front(points)
    report.update(best_on_validation=best, pareto_front=front)
    write_json(f"{args.out}.json", report)
    plot_pareto(points, front, best, args.budget, f"{args.out}.png")
    print(table(points, best))
    print(f"wrote {args.out}.json and {args.out}.png")
    return report


def table(points: dict, best) -> str:
    splits = list(next(iter(points.values()))["splits"]) if points else []
    lines = [f"| point | minutes | validation | {' | '.join(splits)} | hard mean | worst attack | combination |", "|---" * (len(splits) + 6) + "|"]
    for name, p in sorted(points.items(), key=lambda item: item[1]["train_minutes"]):
        cells = " | ".join(f"{100 * p['splits'][s]['accuracy']:.2f}" for s in splits)
        mark = " (best on validation)" if name == best else ""
        attacked = p.get("robustness", {})
        single = {a: v for a, v in attacked.items() if a != "combo"}
        worst = f"{min(single, key=single.get)} {100 * min(single.values()):.2f}" if single else "-"
        combo = f"{100 * attacked['combo']:.2f}" if "combo" in attacked else "-"
        lines.append(f"| {name}{mark} | {p['train_minutes']:.1f} | {100 * p['validation']['accuracy']:.2f} | {cells} | {100 * (p['hard_mean'] or 0):.2f} | {worst} | {combo} |")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except TfdnadetError as exc:
        sys.exit(str(exc))
