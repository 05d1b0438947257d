"""Open-set attribution on the mini GAN zoo: does a model reject architectures it never learnt, yet still accept
(and name) new seeds, losses, finetunes and data sets of the ones it did?

Each method (DNA-Det = Base+PT+PCL, Base, AttNet) is trained on the zoo's train split without the --unknown
architectures; its Gaussian rejection rule is fitted on those training images (`gaussian`, the default) or on them
plus the validation split's images of known classes (`gaussian +validation`), its threshold calibrated on the
validation split (known classes only; out of fold for `gaussian +validation`). Then every score is measured per known
test split: closed-set accuracy, AUROC known vs unknown, OSCR, and the false-rejection rate at the threshold rejecting
95 % of the unknowns; for the Gaussian rules also the share of each split and of the unknowns their own calibrated
threshold refuses (it promises to accept 95 % of known images). Zoo, stage 1 and runs live in --work and are reused
when the script runs again.

    python benchmarks/open_set.py --preset small [--unknown dcgan,stylegan2] [--config cpu] [--work DIR]
"""

import argparse
import csv
import os
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

from cross_test import RESULTS, write_results  # noqa: E402  (the script's own folder is on sys.path)
from sweep import trained  # noqa: E402

from tfdnadet.atomic import atomic_path  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.evaluation.open_set import calibrate_rejection, evaluate_open_set, open_set_summary, zoo_calibration_data  # noqa: E402
from tfdnadet.methods import apply_method  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.stage1 import train_stage1  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.build import build_zoo  # noqa: E402

# (row, --method, initialised from stage 1)
ROWS = (("DNA-Det", "dnadet", True), ("Base", "base", False), ("AttNet", "attnet", False))
SCORES = ("msp", "gaussian", "gaussian +validation")  # table labels: the score, and the data its Gaussian was fitted on
DEFAULT_UNKNOWN = "dcgan,stylegan2"  # tiny has neither: there infomaxgan is held out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="zoo preset: tiny, small or full")
    parser.add_argument("--unknown", default=None, help="architectures held out of training (default: dcgan,stylegan2; tiny: infomaxgan)")
    parser.add_argument("--config", default="cpu", help="config of stage 1 and of every method")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of every stage-2 run (default: the config's)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="train.steps_per_epoch of every run")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="stage1.epochs (default: the config's)")
    parser.add_argument("--work", default=None, help="zoo, stage 1 and runs (default: ./open_set_<preset>)")
    parser.add_argument("--rows", default=",".join(row for row, _, _ in ROWS), help="comma-separated rows to run")
    parser.add_argument("--out", default=os.path.join(RESULTS, "open_set"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def known_train_manifest(zoo: dict, unknown: list) -> str:
    """The zoo's train split without the unknown architectures, as a manifest beside it (relative paths resolve)."""
    path = os.path.join(zoo["root"], f"train_without_{'_'.join(unknown)}.csv")
    with open(os.path.join(zoo["root"], "train.csv"), newline="") as f:
        rows = list(csv.reader(f))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [row for row in rows[1:] if row[1] not in unknown])
    return path


def main():
    args = parse_args()
    unknown = (args.unknown or ("infomaxgan" if args.preset == "tiny" else DEFAULT_UNKNOWN)).split(",")
    work = args.work or f"open_set_{args.preset}"
    zoo = build_zoo(os.path.join(work, "zoo"), args.preset)
    train_csv = known_train_manifest(zoo, unknown)
    validation_csv = zoo_calibration_data(zoo["root"])["validation"]
    overrides = {"data.base_size": zoo["image_size"], "train.epochs": args.epochs, "train.steps_per_epoch": args.steps_per_epoch}
    config = load_config(args.config, overrides)
    stage1_config = load_config(args.config, {"data.base_size": zoo["image_size"], "stage1.epochs": args.stage1_epochs})
    rows = {}
    for row, method, pretrained in ROWS:
        if row not in args.rows.split(","):
            continue
        init = None
        if pretrained:
            init, _ = trained(os.path.join(work, "stage1"), lambda run: train_stage1(None, run, stage1_config, resume=True, verbose=2))
        run_dir = os.path.join(work, "runs", row)
        model_dir, seconds = trained(
            run_dir, lambda run: train_stage2(train_csv, run, apply_method(config, method), init_model=init, resume=True, verbose=2)
        )
        started, scores = time.time(), {}
        calibrate_rejection(model_dir, "gaussian", validation_csv, train_csv, fit_validation=True)
        scores["gaussian +validation"] = evaluate_open_set(load_detector(model_dir), zoo["root"], unknown)
        rule = calibrate_rejection(model_dir, "gaussian", validation_csv, train_csv)  # the default rule stays in the model
        scores.update((score, evaluate_open_set(load_detector(model_dir), zoo["root"], unknown, score)) for score in ("msp", "gaussian"))
        scores = {label: open_set_summary(scores[label]) for label in SCORES}
        rows[row] = {"method": method, "train_seconds": seconds, "evaluate_seconds": round(time.time() - started, 1), "threshold": rule["threshold"], "scores": scores}
        print(f"{row}: " + ", ".join(f"{s} AUROC {m['all_known']['auroc']:.3f}" for s, m in scores.items()), flush=True)
    report = {"preset": args.preset, "config": args.config, "overrides": overrides, "unknown": unknown, "zoo": os.path.abspath(zoo["root"]), "rows": rows}
    table = markdown_table(rows) + "\n\n" + unknown_models_table(rows)
    print(table)
    write_results(args.out, report, f"Open-set attribution, zoo preset `{args.preset}`, config `{args.config}`, unknown: {', '.join(unknown)}", table)


def markdown_table(rows: dict) -> str:
    """One line per (method, score, known split): accuracy, AUROC, OSCR, false rejection at 95 % of unknowns rejected,
    and the share the rule's own calibrated threshold refuses (- for a score that is not the rule); then the share of
    the unknowns that threshold refuses."""
    lines = [
        "| method | score | split | images | accuracy (%) | AUROC | OSCR | false rejection (%) | refused by the rule (%) |",
        "|" + "---|" * 9,
    ]
    for row, result in rows.items():
        for score, summary in result["scores"].items():
            for split, m in [*summary["splits"].items(), ("all known", summary["all_known"])]:
                lines.append(
                    f"| {row} | {score} | {split} | {m['count']} | {100 * m['accuracy']:.2f} | {m['auroc']:.3f} | {m['oscr']:.3f} | "
                    f"{100 * m['false_rejection_at_95']:.2f} | {_percent(m.get('refused_by_rule'))} |"
                )
            refused = _percent(summary["unknown_refused_by_rule"])
            lines.append(f"| {row} | {score} | unknown | {summary['unknown_count']} | | | | | {refused} |")
    return "\n".join(lines)


def unknown_models_table(rows: dict) -> str:
    """One line per (method, score, unknown generator model), least told apart first: its AUROC against all known
    test images, the class the multiclass head names most often, and the share the rule's threshold refuses."""
    lines = ["| method | score | unknown generator model | images | AUROC vs all known | named most often (%) | refused by the rule (%) |", "|" + "---|" * 7]
    for row, result in rows.items():
        for score, summary in result["scores"].items():
            for model, m in sorted(summary["unknown_models"].items(), key=lambda item: item[1]["auroc"]):
                top, share = next(iter(m["taken_for"].items()))
                lines.append(f"| {row} | {score} | {model} | {m['count']} | {m['auroc']:.3f} | {top} {100 * share:.0f} | {_percent(m.get('refused_by_rule'))} |")
    return "\n".join(lines)


def _percent(share) -> str:
    return "-" if share is None else f"{100 * share:.2f}"


if __name__ == "__main__":
    main()
