"""Fake-vs-real detection of unseen architectures (GFD-Net [4.4]): train on real and some architectures, test on others.

Rows: GFD-Net trained on two classes (real, fake = every seen architecture; adversarial weight 0.01 as the paper
uses for detection), and DNA-Det trained as usual on real + the seen architectures, judged real-vs-rest
(P(fake) = 1 - P(real)). Both are scored on the zoo's closed-set test images of real and of the unseen
architectures (default dcgan and stylegan2, which the small zoo has): accuracy at P(fake) > 0.5, AUC, and the
share of unseen fakes caught. Zoo, stage 1 and runs are kept in --work and reused when the script runs again.

    python benchmarks/fake_vs_real.py --preset small [--config cpu] [--epochs N] [--unseen dcgan,stylegan2]
"""

import argparse
import csv
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from tfdnadet.atomic import atomic_path, write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.inference import load_for_detector, predict_loaded  # noqa: E402
from tfdnadet.methods import apply_method  # noqa: E402
from tfdnadet.models.detector import MULTICLASS  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.stage1 import train_stage1  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.build import build_zoo  # noqa: E402

REAL, FAKE = "real", "fake"
DETECTION_ADVERSARIAL_WEIGHT = 0.01  # GFD-Net [3.4]: w2 for fake-vs-real detection
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="zoo preset: tiny, small or full")
    parser.add_argument("--config", default="cpu", help="config of stage 1 and of both methods")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of both runs (default: the config's)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="train.steps_per_epoch of both runs")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="stage1.epochs (default: the config's)")
    parser.add_argument("--unseen", default="dcgan,stylegan2", help="architectures left out of training, tested on")
    parser.add_argument("--work", default=None, help="zoo, stage 1 and runs (default: ./fake_vs_real_<preset>)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "fake_vs_real"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def read_rows(manifest: str) -> list:
    with open(manifest, newline="") as f:
        return [(row["path"], row["label"]) for row in csv.DictReader(f)]


def write_rows(manifest: str, rows: list) -> str:
    """A path,label manifest beside the zoo's own (its paths stay relative to the zoo root)."""
    with atomic_path(manifest) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest


def trained(run_dir: str, train) -> tuple:
    model_dir = os.path.join(run_dir, "model")
    started = time.time()
    if not os.path.isfile(os.path.join(model_dir, "detector.json")):
        train(run_dir)
    return model_dir, round(time.time() - started, 1)


def fake_scores(model_dir: str, paths: list) -> np.ndarray:
    """P(fake) = 1 - P(real) of each test image."""
    detector = load_detector(model_dir)
    loaded = load_for_detector(detector, paths)
    if loaded.failures:
        raise SystemExit(f"unreadable test images, e.g. {loaded.failures[0]}")
    return 1.0 - predict_loaded(detector, loaded)[MULTICLASS][:, detector.class_names.index(REAL)]


def detection_metrics(scores: np.ndarray, is_fake: np.ndarray) -> dict:
    predicted = scores > 0.5
    return {
        "accuracy": float(np.mean(predicted == is_fake)),
        "auc": float(roc_auc_score(is_fake, scores)),
        "unseen_fakes_caught": float(np.mean(predicted[is_fake])),
        "reals_passed": float(np.mean(~predicted[~is_fake])),
    }


def main():
    args = parse_args()
    work = args.work or f"fake_vs_real_{args.preset}"
    zoo = build_zoo(os.path.join(work, "zoo"), args.preset)
    root, unseen = zoo["root"], args.unseen.split(",")
    missing = sorted(set(unseen) - set(zoo["preset"]["architectures"]))
    if missing:
        raise SystemExit(f"--unseen {','.join(missing)}: not in the {args.preset} zoo ({', '.join(zoo['preset']['architectures'])})")
    seen_rows = [(path, label) for path, label in read_rows(os.path.join(root, "train.csv")) if label not in unseen]
    multiclass_csv = write_rows(os.path.join(root, "fvr_seen.csv"), seen_rows)
    binary_csv = write_rows(os.path.join(root, "fvr_seen_binary.csv"), [(p, REAL if label == REAL else FAKE) for p, label in seen_rows])
    test = [(os.path.join(root, p), label) for p, label in read_rows(os.path.join(root, "closed-set.csv")) if label == REAL or label in unseen]
    is_fake = np.array([label != REAL for _, label in test])

    overrides = {"data.base_size": zoo["image_size"], "train.epochs": args.epochs, "train.steps_per_epoch": args.steps_per_epoch}
    config = load_config(args.config, overrides)
    stage1_config = load_config(args.config, {"data.base_size": zoo["image_size"], "stage1.epochs": args.stage1_epochs})
    stage1, _ = trained(os.path.join(work, "stage1"), lambda run: train_stage1(None, run, stage1_config, resume=True, verbose=2))
    gfd = apply_method(config, "gfd")
    gfd.gfd.adversarial_weight = DETECTION_ADVERSARIAL_WEIGHT
    runs = {
        "DNA-Det (real vs rest)": (multiclass_csv, apply_method(config, "dnadet")),
        "GFD-Net (real vs fake)": (binary_csv, gfd),
    }
    rows = {}
    for row, (manifest, method_config) in runs.items():
        run_dir = os.path.join(work, "runs", row.split(" ")[0].lower())
        model_dir, seconds = trained(run_dir, lambda run: train_stage2(manifest, run, method_config, init_model=stage1, resume=True, verbose=2))
        rows[row] = {"train_seconds": seconds, **detection_metrics(fake_scores(model_dir, [p for p, _ in test]), is_fake)}
        print(f"{row}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[row].items()), flush=True)
    table = markdown_table(rows)
    print(table)
    report = {"preset": args.preset, "config": args.config, "overrides": overrides, "unseen": unseen, "test_images": len(test), "rows": rows}
    write_json(f"{args.out}.json", report)
    with atomic_path(f"{args.out}.md") as temporary, open(temporary, "w") as f:
        f.write(f"Fake vs real on unseen {', '.join(unseen)} (zoo `{args.preset}`, config `{args.config}`, {len(test)} test images)\n\n{table}\n")
    print(f"wrote {args.out}.json and {args.out}.md")


def markdown_table(rows: dict) -> str:
    columns = ("accuracy", "auc", "unseen_fakes_caught", "reals_passed")
    lines = ["| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {row} | " + " | ".join(f"{100 * result[c]:.1f}" for c in columns) + " |" for row, result in rows.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
