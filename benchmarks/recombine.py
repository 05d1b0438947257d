"""Which ensemble shape wins, from stage-2 runs a sweep already trained: their answers recombined, no training.

Every finished member run under WORK/stage2/*/members/ is judged once on the zoo's validation halves and test
splits (the logits of each patch-grid cell, kept in WORK/recombine/ so that a later call judges only new runs); an
ensemble of runs averages the cells' logits, as the model of an ensemble does (tfdnadet.models.ensemble). For each
shape E x R (E stage-1 encoders, R runs of each) up to --samples ensembles are drawn per validation half from runs
that chose their epoch on that half, and scored on the other half and on the test splits. Runs are grouped by the
stage-1 encoder they fine-tuned (the weights of their init).

    python benchmarks/recombine.py --zoo ZOO_DIR --work SWEEP_WORK_DIR [--shapes 1x1,2x2,5x2] [--samples 300]
"""

import argparse
import glob
import hashlib
import json
import os
import random
import sys

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.data.preprocess import to_model_input  # noqa: E402
from tfdnadet.errors import TfdnadetError  # noqa: E402
from tfdnadet.evaluation.evaluate import load_labelled  # noqa: E402
from tfdnadet.evaluation.protocol import zoo_test_splits  # noqa: E402
from tfdnadet.models.detector import MULTICLASS  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402

HALVES = ("A", "B")


def member_runs(work: str) -> list:
    """[{"run", "half", "encoder"}] of the finished member runs of a sweep's work directory."""
    runs, seen = [], set()
    for record in sorted(glob.glob(os.path.join(work, "stage2", "*", "members", "run*", "run.json"))):
        with open(record, encoding="utf-8") as f:
            info = json.load(f)
        run = os.path.dirname(record)
        weights = backbone_hash(os.path.join(run, "model"))
        if weights in seen:  # the same seed and encoder in two ensembles: the same weights, counted once
            continue
        seen.add(weights)
        half = os.path.basename(info["val_data"])[len("validation_") : -len(".csv")]
        runs.append({"run": run, "half": half, "encoder": backbone_hash(info["init_model"])})
    if not runs:
        raise TfdnadetError(f"No finished member runs under {work}/stage2/*/members/.")
    return runs


def backbone_hash(model_dir: str) -> str:
    with open(os.path.join(model_dir, "detector.json"), encoding="utf-8") as f:
        return json.load(f)["backbone_sha256"]


def cell_logits(model_dir: str, data: dict) -> dict:
    """{split: float32 logits [N, cells, classes]} of the multiclass head on every grid cell of every image."""
    detector = load_detector(model_dir).for_inference()
    size = detector.preprocessing.input_size
    forward = tf.function(lambda x: detector.logits(detector.features(x, detector.head_layers()))[MULTICLASS])
    return {split: np.concatenate([forward(to_model_input(images[i : i + 64], size)).numpy() for i in range(0, len(images), 64)]) for split, (images, _) in data.items()}


def cached_cell_logits(model_dir: str, data: dict, cache_dir: str) -> dict:
    """cell_logits, read from cache_dir when an earlier call judged the same weights on the same images."""
    digest = hashlib.sha256()
    for split, (images, labels) in sorted(data.items()):
        digest.update(split.encode() + labels.tobytes() + images[::97].tobytes())
    images_key = digest.hexdigest()[:16]
    path = os.path.join(cache_dir, f"{backbone_hash(model_dir)[:16]}-{images_key}.npz")
    if os.path.exists(path):
        with np.load(path) as cached:
            return {split: cached[split] for split in data}
    logits = cell_logits(model_dir, data)
    os.makedirs(cache_dir, exist_ok=True)
    partial = path + ".partial.npz"
    np.savez(partial, **logits)
    os.replace(partial, path)
    return logits


def accuracy(logits: list, labels: np.ndarray) -> float:
    """% of images whose mean over cells of the softmax of the runs' mean logits names the right class."""
    mean = np.mean(logits, axis=0)
    probabilities = np.exp(mean - mean.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return 100.0 * float(np.mean(probabilities.mean(1).argmax(-1) == labels))


def draw(pools: dict, encoders: int, runs_each: int, samples: int, rng: random.Random) -> list:
    """Up to `samples` distinct ensembles: `encoders` stage-1 encoders, `runs_each` runs of each, from `pools`."""
    eligible = sorted(e for e, pool in pools.items() if len(pool) >= runs_each)
    if len(eligible) < encoders:
        return []
    drawn = set()
    for _ in range(samples * 4):
        chosen = rng.sample(eligible, encoders)
        drawn.add(frozenset(run for e in chosen for run in rng.sample(pools[e], runs_each)))
        if len(drawn) == samples:
            break
    return sorted(sorted(ensemble) for ensemble in drawn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--work", required=True, help="a benchmarks/sweep.py --work directory")
    parser.add_argument("--shapes", default="1x1,2x2,3x2,4x2,5x1,5x2,6x1,6x2,7x1,7x2,8x1,8x2", help="E x R: E stage-1 encoders, R runs each")
    parser.add_argument("--samples", type=int, default=300, help="ensembles drawn per shape and validation half")
    parser.add_argument("--out", default="benchmarks/results/recombine")
    args = parser.parse_args()
    try:
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
        runs = member_runs(args.work)
        first = load_detector(os.path.join(runs[0]["run"], "model"))
        manifests = {f"validation_{h}": os.path.join(args.work, f"validation_{h}.csv") for h in HALVES}
        manifests.update(zoo_test_splits(args.zoo))
        loaded = {split: load_labelled(first, path, allow_outside_root=True) for split, path in manifests.items()}
    except (TfdnadetError, ValueError) as error:
        sys.exit(f"error: {error}")
    data = {split: (images.images, images.labels) for split, images in loaded.items()}
    logits = {}
    for index, run in enumerate(runs, 1):
        print(f"judging run {index}/{len(runs)}: {run['run']}", flush=True)
        logits[run["run"]] = cached_cell_logits(os.path.join(run["run"], "model"), data, os.path.join(args.work, "recombine"))
    tests = list(zoo_test_splits(args.zoo))
    rng = random.Random(0)
    rows = []
    for encoders, runs_each in shapes:
        scores = []
        for half, other in zip(HALVES, reversed(HALVES)):
            pools = {}
            for run in runs:
                if run["half"] == half:
                    pools.setdefault(run["encoder"], []).append(run["run"])
            for ensemble in draw(pools, encoders, runs_each, args.samples, rng):
                splits = {"validation": f"validation_{other}", **{s: s for s in tests}}
                scores.append({name: accuracy([logits[r][split] for r in ensemble], data[split][1]) for name, split in splits.items()})
        if scores:
            rows.append({"shape": f"{encoders} x {runs_each}", "ensembles": len(scores), **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
    columns = ["validation", *tests]
    print(f"\n{len(runs)} runs over {len({r['encoder'] for r in runs})} stage-1 encoders; accuracy %, mean over the ensembles drawn:\n")
    print("| stage-1 encoders x runs each | ensembles | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in rows:
        print(f"| {row['shape']} | {row['ensembles']} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    write_json(args.out + ".json", {"zoo": os.path.abspath(args.zoo), "work": os.path.abspath(args.work), "runs": runs, "samples": args.samples, "rows": rows})
    print(f"\nwrote {args.out}.json")


if __name__ == "__main__":
    main()
