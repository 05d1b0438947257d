"""Do training views of other generators of the same architecture help on generators never seen?

`data.augment` ops `transpose` (rows and columns swapped: exactly the image of the generator with transposed kernels),
`symmetry` (one of the square's eight flips and turns: exact only where every layer pads evenly) and `channels`
(colour channels reordered and inverted: exactly the image of the generator with its RGB layer so changed), alone
and `transpose` with `channels`, against no augmentation. Data: randomly initialised generators of the six zoo architectures at 64 px (tfdnadet.zoo.testdata),
made in seconds where the mini GAN zoo takes an hour: train seed 0 (300 images each, 300 real crops), `val` seed 1
(each run keeps its epoch on it), `valB` seed 5 (scores the arms), `closed` (seed 0, new latents) and `test` seeds
2-4. Each arm trains `--runs` stage-2 runs of the cpu config on one stage-1 encoder (train.seed 0, 1, ...); the table
gives the mean of single runs and the ensemble of the arm's runs (mean probability). Finished runs are kept.

    python benchmarks/view_augment.py --init STAGE1_MODEL [--runs 4] [--arms none,transpose,channels] [--work DIR]
"""

import argparse
import os

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.evaluation.evaluate import load_labelled  # noqa: E402
from tfdnadet.inference import predict_loaded  # noqa: E402
from tfdnadet.models.detector import MULTICLASS  # noqa: E402
from tfdnadet.model_metadata import is_model_dir  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.testdata import make_test_dataset  # noqa: E402

ARCHITECTURES = ("progan", "mmdgan", "sngan", "infomaxgan", "dcgan", "stylegan2")
# split -> (generator seeds, images per generator, real crops, seed of the latents and crops)
SPLITS = {
    "train": ((0,), 300, 300, 0),
    "val": ((1,), 100, 100, 1),
    "valB": ((5,), 100, 100, 5),
    "closed": ((0,), 100, 100, 7),
    "test": ((2, 3, 4), 100, 300, 2),
}
SCORED = ("valB", "closed", "test")
ARMS = {
    "none": [],
    "transpose": [{"op": "transpose", "p": 0.5}],
    "symmetry": [{"op": "symmetry"}],
    "channels": [{"op": "channels", "p": 0.5}],
    "transpose+channels": [{"op": "transpose", "p": 0.5}, {"op": "channels", "p": 0.5}],
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a stage-1 model directory with one encoder (e.g. RUN/members/run0/model)")
    parser.add_argument("--runs", type=int, default=4, help="stage-2 runs per arm")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms of: {', '.join(ARMS)}")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--work", default="view_augment_work", help="data and runs (kept, so a rerun resumes)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "view_augment.json"))
    return parser.parse_args(argv)


def make_data(work: str, splits: dict = SPLITS) -> None:
    for split, (seeds, images, real, seed) in splits.items():
        if not os.path.isdir(os.path.join(work, "data", split)):
            make_test_dataset(os.path.join(work, "data", split), ARCHITECTURES, seeds, images, 64, real, seed)


def run_probabilities(work: str, name: str, seed: int, init: str, augment: list, config: str, scored=SCORED) -> dict:
    """{split: (probabilities, labels, paths)} of one stage-2 run, trained unless finished, cached in its folder."""
    run = os.path.join(work, "runs", f"{name}-s{seed}")
    cache = os.path.join(run, "probabilities.npz")
    if not os.path.isfile(cache):
        if not is_model_dir(os.path.join(run, "model")):
            overrides = {"train.runs_per_encoder": 1, "train.seed": seed, "data.augment": augment}
            train_stage2(os.path.join(work, "data", "train"), run, load_config(config, overrides), init_model=init, resume=True, verbose=2, val_data=os.path.join(work, "data", "val"))
        detector = load_detector(os.path.join(run, "model"))
        arrays = {}
        for split in scored:
            loaded = load_labelled(detector, os.path.join(work, "data", split))
            arrays.update({f"{split}_probabilities": predict_loaded(detector, loaded, 64)[MULTICLASS], f"{split}_labels": loaded.labels, f"{split}_paths": np.array(loaded.paths)})
        np.savez(cache, **arrays)
    data = np.load(cache)
    return {split: (data[f"{split}_probabilities"], data[f"{split}_labels"], data[f"{split}_paths"]) for split in scored}


def accuracy(probabilities, labels, keep=None) -> float:
    keep = np.ones(len(labels), bool) if keep is None else keep
    return 100 * float(np.mean(np.argmax(probabilities[keep], 1) == labels[keep]))


def arm_row(runs: list) -> dict:
    """Single runs' accuracies, their mean and the ensemble's, per split; the test split also per generator seed."""
    row = {}
    for split in runs[0]:
        labels, paths = runs[0][split][1], runs[0][split][2]
        groups = {split: None}
        if split == "test":
            groups.update({f"test seed {s}": np.array([f"seed{s}" in str(p) for p in paths]) for s in SPLITS["test"][0]})
        mean = np.mean([run[split][0] for run in runs], axis=0)
        for name, keep in groups.items():
            singles = [accuracy(run[split][0], labels, keep) for run in runs]
            row[name] = {"runs": singles, "single_mean": float(np.mean(singles)), "ensemble": accuracy(mean, labels, keep)}
    return row


def table(rows: dict) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| arm | runs | " + " | ".join(f"{c} (single / ensemble)" for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for arm, row in rows.items():
        cells = [f"{row[c]['single_mean']:.1f} / {row[c]['ensemble']:.1f}" for c in columns]
        lines.append(f"| {arm} | {len(row[columns[0]]['runs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"Unknown arm(s): {', '.join(unknown)}. Known: {', '.join(ARMS)}")
    if not is_model_dir(args.init):
        raise SystemExit(f"--init {args.init}: not a model directory (a stage-1 run's RUN/model or RUN/members/runK/model)")
    make_data(args.work)
    rows = {arm: arm_row([run_probabilities(args.work, arm, seed, args.init, ARMS[arm], args.config) for seed in range(args.runs)]) for arm in arms}
    print(table(rows))
    write_json(args.out, {"init": os.path.abspath(args.init), "config": args.config, "splits": {k: list(v) for k, v in SPLITS.items()}, "arms": rows})
    return rows


if __name__ == "__main__":
    main()
