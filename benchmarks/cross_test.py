"""The paper's Table 2 on the mini GAN zoo: every method trained on the same train split, scored on every test split.

Rows: the baselines PRNU, LeveFreq (DCT-spectrum CNN) and AttNet, and the ablations Base, Base+PT, Base+PCL and
Base+PT+PCL (DNA-Det); +PT initialises the encoder from one stage-1 run. GFD-Net (Yang et al. 2021) adds its
Table 4 ablations G, G+D, G+C, G+D+C and G+D+C+perceptual (F: the stage-1 encoder), and G and G+D+C+perceptual
with G_enc initialised from stage 1 (+PT). The two-domain ablation adds the spectral
branch alone (Spectral+PT+PCL) and fused with the encoder (Two-domain+PT+PCL) next to DNA-Det (the spatial branch
alone), each with a stage-1 run of its own backbone. Columns: accuracy (%) on closed-set,
cross-seed, cross-loss, cross-finetune and cross-dataset (macro-F1 in the JSON). Zoo, stage 1 and every run are
kept in --work and reused when the script runs again, so an interrupted run resumes; --zoo and --stage1-from use
a zoo and a dnadet stage-1 run made elsewhere instead (read, never written).

    python benchmarks/cross_test.py --preset small [--config cpu] [--epochs N] [--work DIR]
    python benchmarks/cross_test.py --zoo ZOO_DIR --stage1-from STAGE1_RUN --rows "GFD G,GFD G+D+C+perceptual" --work DIR
"""

import argparse
import os
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

from sweep import trained  # noqa: E402  (the script's own folder is on sys.path)

from tfdnadet.atomic import atomic_path, write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.evaluation.protocol import evaluate_protocol, protocol_summary  # noqa: E402
from tfdnadet.methods import METHODS, apply_method  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.stage1 import train_stage1  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.build import TEST_SPLITS, build_zoo, read_zoo  # noqa: E402

# (row, --method, initialised from stage 1)
ROWS = (
    ("PRNU", "prnu", False),
    ("LeveFreq", "dct", False),
    ("AttNet", "attnet", False),
    ("Base", "base", False),
    ("Base+PT", "base", True),
    ("Base+PCL", "dnadet", False),
    ("Base+PT+PCL (DNA-Det)", "dnadet", True),
    ("Spectral+PT+PCL", "spectral", True),
    ("Two-domain+PT+PCL", "dnadet_spectral", True),
    ("GFD G", "gfd", False),
    ("GFD G+D", "gfd", False),
    ("GFD G+C", "gfd", False),
    ("GFD G+D+C", "gfd", False),
    ("GFD G+D+C+perceptual", "gfd", False),
    ("GFD G+PT", "gfd", True),
    ("GFD G+D+C+perceptual+PT", "gfd", True),
)
# GFD-Net's Table 4 ablations: the loss weights (paper Eq. 7: 10, 0.1, 1, 1) a row sets to 0. The perceptual rows' F
# is the dnadet stage-1 encoder (the VGG-16 substitute). G_enc starts at random, except in the +PT rows, which start
# it from that stage-1 encoder as DNA-Det does (and fine-tune the same blocks).
GFD_ABLATIONS = {
    "GFD G": ("adversarial", "auxiliary", "perceptual"),
    "GFD G+D": ("auxiliary", "perceptual"),
    "GFD G+C": ("adversarial", "perceptual"),
    "GFD G+D+C": ("perceptual",),
    "GFD G+D+C+perceptual": (),
    "GFD G+PT": ("adversarial", "auxiliary", "perceptual"),
    "GFD G+D+C+perceptual+PT": (),
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="zoo preset: tiny, small or full")
    parser.add_argument("--config", default="cpu", help="config of stage 1 and of every method")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of every stage-2 run (default: the config's)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="train.steps_per_epoch of every run")
    parser.add_argument("--gfd-epochs", type=int, default=None, help="train.epochs of the GFD rows (default: --epochs)")
    parser.add_argument("--gfd-steps-per-epoch", type=int, default=None, help="train.steps_per_epoch of the GFD rows (default: --steps-per-epoch)")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="stage1.epochs (default: the config's)")
    parser.add_argument("--work", default=None, help="zoo, stage 1 and runs (default: ./cross_test_<preset>)")
    parser.add_argument("--zoo", default=None, help="an existing zoo directory to use instead of building WORK/zoo (--preset is then ignored)")
    parser.add_argument("--stage1-from", default=None, help="a finished dnadet stage-1 run directory to use instead of training WORK/stage1")
    parser.add_argument("--rows", default=",".join(row for row, _, _ in ROWS), help="comma-separated rows to run")
    parser.add_argument("--out", default=os.path.join(RESULTS, "cross_test"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def main():
    args = parse_args()
    work = args.work or f"cross_test_{args.preset}"
    started = time.time()
    zoo = read_zoo(args.zoo) if args.zoo else build_zoo(os.path.join(work, "zoo"), args.preset)
    zoo_seconds = round(time.time() - started, 1)
    overrides = {"data.base_size": zoo["image_size"], "train.epochs": args.epochs, "train.steps_per_epoch": args.steps_per_epoch}
    config = load_config(args.config, overrides)
    # backbone -> {"model": stage-1 model directory, "train_seconds": ...}, trained when first needed
    stage1_runs = {"dnadet": finished_stage1(args.stage1_from)} if args.stage1_from else {}
    train_csv = os.path.join(zoo["root"], "train.csv")
    rows = {}
    for row, method, pretrained in ROWS:
        if row not in args.rows.split(","):
            continue
        run_dir = os.path.join(work, "runs", row.replace("GFD ", "GFD_").split(" ")[0].replace("+", "_"))
        init = stage1_model(stage1_runs, METHODS[method][0], work, args, zoo["image_size"]) if pretrained else None
        method_config = apply_method(config, method)
        if row in GFD_ABLATIONS:
            # A GFD step runs G, D, C and F: several DNA-Det steps' time, so the same minutes hold fewer steps.
            method_config.train.epochs = args.gfd_epochs or method_config.train.epochs
            method_config.train.steps_per_epoch = args.gfd_steps_per_epoch or method_config.train.steps_per_epoch
            method_config = gfd_ablation(method_config, GFD_ABLATIONS[row], lambda: stage1_model(stage1_runs, "dnadet", work, args, zoo["image_size"]))
        model_dir, seconds = trained(
            run_dir, lambda run: train_stage2(train_csv, run, method_config, init_model=init, resume=True, verbose=2)
        )
        results = evaluate_protocol(load_detector(model_dir), zoo["root"])
        t = method_config.train
        rows[row] = {"method": method, "init": init, "train_seconds": round(seconds, 1), "epochs": t.epochs, "steps_per_epoch": t.steps_per_epoch}
        rows[row]["splits"] = protocol_summary(results)
        print(f"{row}: " + ", ".join(f"{s} {100 * m['accuracy']:.1f}" for s, m in rows[row]["splits"].items()), flush=True)
    report = {
        "preset": zoo["preset"]["name"],
        "config": args.config,
        "overrides": overrides,
        "zoo": {"root": os.path.abspath(zoo["root"]), "build_seconds": zoo_seconds, "images": {s: v["images"] for s, v in zoo["splits"].items()}},
        "stage1": stage1_runs,
        "rows": rows,
    }
    table = markdown_table(rows)
    print(table)
    write_results(args.out, report, f"Cross-test protocol (Table 2 layout), zoo preset `{report['preset']}`, config `{args.config}`: accuracy (%) / macro-F1 (%)", table)


def write_results(out: str, report: dict, heading: str, table: str) -> None:
    """OUT.json (the report) and OUT.md (heading and markdown table), each written atomically."""
    write_json(f"{out}.json", report)
    with atomic_path(f"{out}.md") as temporary, open(temporary, "w") as f:
        f.write(f"{heading}\n\n{table}\n")
    print(f"wrote {out}.json and {out}.md")


def gfd_ablation(config, dropped: tuple, perceptual_model):
    """`config` with the GFD-Net loss parts `dropped` weighted 0; F from `perceptual_model()` when perceptual stays."""
    for part in dropped:
        setattr(config.gfd, f"{part}_weight", 0.0)
    if "perceptual" not in dropped:
        config.gfd.perceptual_model = perceptual_model()
    return config


def finished_stage1(run_dir: str) -> dict:
    """A stage-1 run made elsewhere (--stage1-from): its model directory; its training time is not ours to count."""
    model_dir = os.path.abspath(os.path.join(run_dir, "model"))
    if not os.path.isfile(os.path.join(model_dir, "detector.json")):
        raise SystemExit(f"--stage1-from {run_dir}: not a finished stage-1 run (no model/detector.json)")
    return {"model": model_dir, "train_seconds": None}


def stage1_model(runs: dict, backbone: str, work: str, args, base_size: int) -> str:
    """The stage-1 model of `backbone` (WORK/stage1 for dnadet, WORK/stage1_BACKBONE otherwise), trained once."""
    if backbone not in runs:
        overrides = {"data.base_size": base_size, "stage1.epochs": args.stage1_epochs, "model.backbone": backbone}
        config = load_config(args.config, overrides)
        run_dir = os.path.join(work, "stage1" if backbone == "dnadet" else f"stage1_{backbone}")
        model, seconds = trained(run_dir, lambda run: train_stage1(None, run, config, resume=True, verbose=2))
        runs[backbone] = {"model": os.path.abspath(model), "train_seconds": seconds}
    return runs[backbone]["model"]


def markdown_table(rows: dict) -> str:
    header = "| method | " + " | ".join(TEST_SPLITS) + " | stage-2 minutes |"
    lines = [header, "|" + "---|" * (len(TEST_SPLITS) + 2)]
    for row, result in rows.items():
        cells = [f"{100 * result['splits'][s]['accuracy']:.2f} / {100 * result['splits'][s]['macro_f1']:.2f}" for s in TEST_SPLITS if s in result["splits"]]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {result['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
