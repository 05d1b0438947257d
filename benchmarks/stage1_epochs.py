"""In the same stage-1 minutes, do more stage-1 encoders of fewer epochs answer better than fewer of more?

Where the stage-1 budget fits one 24-epoch encoder of the cpu config, it also fits three of 8 epochs. Each group of
stage-1 encoders (`--group NAME=MODEL,MODEL,...`, e.g. the members of `tfdnadet train-stage1 --set
stage1.encoders=3 --set stage1.epochs=8`) gets `--runs` stage-2 runs per encoder (train.seed 0, 1, ...) on the
randomly initialised generators of benchmarks/view_augment.py, plus `valC` (generator seeds 6-8) to choose on; the
table gives the mean single run and the group's ensemble (mean probability over all its runs) per split.

    python benchmarks/stage1_epochs.py --group 24ep=RUN24/members/run0/model \\
        --group 8ep=RUN8/members/run0/model,RUN8/members/run1/model,RUN8/members/run2/model [--runs 2] [--work DIR]
"""

import argparse
import os

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.model_metadata import is_model_dir  # noqa: E402
from view_augment import RESULTS, SCORED, SPLITS, arm_row, make_data, run_probabilities, table  # noqa: E402

VALIDATION = {"valC": ((6, 7, 8), 100, 300, 6)}  # more generators to choose on than valB's one seed
GROUP_SCORED = ("valC",) + SCORED


def parse_group(text: str) -> tuple:
    """'NAME=MODEL,MODEL' -> (NAME, [MODEL, ...]), each a model directory."""
    name, _, models = text.partition("=")
    paths = [m for m in models.split(",") if m]
    if not name or not paths:
        raise SystemExit(f"--group {text}: expected NAME=MODEL[,MODEL...]")
    missing = [p for p in paths if not is_model_dir(p)]
    if missing:
        raise SystemExit(f"--group {name}: not a model directory: {missing[0]}")
    return name, paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True, help="NAME=MODEL[,MODEL...]: stage-1 encoders of one group")
    parser.add_argument("--runs", type=int, default=2, help="stage-2 runs per encoder")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--work", default="view_augment_work", help="data and runs (kept, so a rerun resumes)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "stage1_epochs.json"))
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    groups = dict(parse_group(g) for g in args.group)
    make_data(args.work, {**SPLITS, **VALIDATION})
    rows = {}
    for name, models in groups.items():
        runs = [
            run_probabilities(args.work, f"{name}-e{k}", seed, model, [], args.config, GROUP_SCORED)
            for k, model in enumerate(models)
            for seed in range(args.runs)
        ]
        rows[f"{name} ({len(models)} x {args.runs})"] = arm_row(runs)
    print(table(rows))
    write_json(args.out, {"groups": {n: [os.path.abspath(m) for m in ms] for n, ms in groups.items()}, "config": args.config, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
