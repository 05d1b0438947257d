"""Fake-vs-real detection of unseen architectures (GFD-Net [4.3]): train on real and some architectures, test on others.

Rows: GFD-Net trained on two classes (real, fake = every seen architecture; adversarial weight 0.01 as the paper
uses for detection), and DNA-Det trained as usual on real + the seen architectures, judged real-vs-rest
(P(fake) = 1 - P(real)). Both start from the same stage-1 encoder, and both choose their epoch on the zoo's
validation generator models of the seen architectures (and its real images). Both are scored on the zoo's
closed-set test images of real and of the unseen architectures (default dcgan and stylegan2, which the small zoo
has): accuracy at P(fake) > 0.5 and AUC over all of them, the share of real images passed, and per unseen
architecture the share of its fakes caught and its AUC against the real images. Zoo, stage 1, manifests and runs
are kept in --work and reused when the script runs again; --zoo and --stage1-from use ones made elsewhere
(read, never written).

    python benchmarks/fake_vs_real.py --preset small [--config cpu] [--epochs N] [--unseen dcgan,stylegan2]
    python benchmarks/fake_vs_real.py --zoo ZOO_DIR --stage1-from STAGE1_RUN --work DIR
"""

import argparse
import csv
import os

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
from cross_test import finished_stage1, write_results  # noqa: E402  (the script's own folder is on sys.path)
from sklearn.metrics import roc_auc_score  # noqa: E402
from sweep import trained  # noqa: E402

from tfdnadet.atomic import atomic_path  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.inference import load_for_detector, predict_loaded  # noqa: E402
from tfdnadet.methods import apply_method  # noqa: E402
from tfdnadet.models.detector import MULTICLASS  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.stage1 import train_stage1  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.build import TRAIN_SPLIT, VALIDATION_SPLIT, build_zoo, read_zoo  # noqa: E402

REAL, FAKE = "real", "fake"
DETECTION_ADVERSARIAL_WEIGHT = 0.01  # GFD-Net [3.4]: w2 for fake-vs-real detection
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="zoo preset: tiny, small or full")
    parser.add_argument("--config", default="cpu", help="config of stage 1 and of both methods")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of both runs (default: the config's)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="train.steps_per_epoch of both runs")
    parser.add_argument("--gfd-epochs", type=int, default=None, help="train.epochs of the GFD run (default: --epochs)")
    parser.add_argument("--gfd-steps-per-epoch", type=int, default=None, help="train.steps_per_epoch of the GFD run (default: --steps-per-epoch)")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="stage1.epochs (default: the config's)")
    parser.add_argument("--unseen", default="dcgan,stylegan2", help="architectures left out of training, tested on")
    parser.add_argument("--work", default=None, help="zoo, stage 1, manifests and runs (default: ./fake_vs_real_<preset>)")
    parser.add_argument("--zoo", default=None, help="an existing zoo directory to use instead of building WORK/zoo (--preset is then ignored)")
    parser.add_argument("--stage1-from", default=None, help="a finished dnadet stage-1 run directory to use instead of training WORK/stage1")
    parser.add_argument("--out", default=os.path.join(RESULTS, "fake_vs_real"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def read_rows(zoo: dict, split: str) -> list:
    """(absolute path, label) of each image of a zoo split."""
    with open(os.path.join(zoo["root"], zoo["splits"][split]["manifest"]), newline="") as f:
        return [(os.path.join(zoo["root"], row["path"]), row["label"]) for row in csv.DictReader(f)]


def write_rows(manifest: str, rows: list) -> str:
    """A path,label manifest of absolute paths (the zoo may be read-only, so manifests live in --work)."""
    os.makedirs(os.path.dirname(manifest), exist_ok=True)
    with atomic_path(manifest) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest


def seen_manifests(zoo: dict, unseen: list, folder: str) -> dict:
    """{"multiclass" | "binary": (train manifest, validation manifest)} without the unseen architectures."""
    manifests = {}
    for split in (TRAIN_SPLIT, VALIDATION_SPLIT):
        seen = [(path, label) for path, label in read_rows(zoo, split) if label not in unseen]
        binary = [(path, REAL if label == REAL else FAKE) for path, label in seen]
        manifests.setdefault("multiclass", []).append(write_rows(os.path.join(folder, f"{split}_seen.csv"), seen))
        manifests.setdefault("binary", []).append(write_rows(os.path.join(folder, f"{split}_seen_binary.csv"), binary))
    return manifests


def fake_scores(model_dir: str, paths: list) -> np.ndarray:
    """P(fake) = 1 - P(real) of each test image."""
    detector = load_detector(model_dir)
    loaded = load_for_detector(detector, paths)
    if loaded.failures:
        raise SystemExit(f"unreadable test images, e.g. {loaded.failures[0]}")
    return 1.0 - predict_loaded(detector, loaded)[MULTICLASS][:, detector.class_names.index(REAL)]


def detection_metrics(scores: np.ndarray, labels: np.ndarray, unseen: list) -> dict:
    """Pooled accuracy and AUC at P(fake) > 0.5, reals passed, and per unseen architecture: fakes caught and AUC vs real."""
    predicted, is_fake, is_real = scores > 0.5, labels != REAL, labels == REAL
    metrics = {
        "accuracy": float(np.mean(predicted == is_fake)),
        "auc": float(roc_auc_score(is_fake, scores)),
        "unseen_fakes_caught": float(np.mean(predicted[is_fake])),
        "reals_passed": float(np.mean(~predicted[is_real])),
    }
    for name in unseen:
        mine = labels == name
        pair = mine | is_real
        metrics[name] = {"caught": float(np.mean(predicted[mine])), "auc": float(roc_auc_score(mine[pair], scores[pair]))}
    return metrics


def main():
    args = parse_args()
    work = args.work or f"fake_vs_real_{args.preset}"
    zoo = read_zoo(args.zoo) if args.zoo else build_zoo(os.path.join(work, "zoo"), args.preset)
    unseen, architectures = args.unseen.split(","), zoo["preset"]["architectures"]
    missing = sorted(set(unseen) - set(architectures))
    if missing:
        raise SystemExit(f"--unseen {','.join(missing)}: not in the zoo ({', '.join(architectures)})")
    manifests = seen_manifests(zoo, unseen, os.path.join(work, "manifests"))
    test = [(path, label) for path, label in read_rows(zoo, "closed-set") if label == REAL or label in unseen]
    labels = np.array([label for _, label in test])

    overrides = {"data.base_size": zoo["image_size"], "train.epochs": args.epochs, "train.steps_per_epoch": args.steps_per_epoch}
    config = load_config(args.config, overrides)
    if args.stage1_from:
        stage1 = finished_stage1(args.stage1_from)["model"]
    else:
        stage1_config = load_config(args.config, {"data.base_size": zoo["image_size"], "stage1.epochs": args.stage1_epochs})
        stage1, _ = trained(os.path.join(work, "stage1"), lambda run: train_stage1(None, run, stage1_config, resume=True, verbose=2))
    gfd = apply_method(config, "gfd")
    gfd.gfd.adversarial_weight = DETECTION_ADVERSARIAL_WEIGHT
    gfd.train.epochs = args.gfd_epochs or gfd.train.epochs
    gfd.train.steps_per_epoch = args.gfd_steps_per_epoch or gfd.train.steps_per_epoch
    runs = {
        "DNA-Det (real vs rest)": (manifests["multiclass"], apply_method(config, "dnadet")),
        "GFD-Net (real vs fake)": (manifests["binary"], gfd),
    }
    rows = {}
    for row, ((train_csv, validation_csv), method_config) in runs.items():
        run_dir = os.path.join(work, "runs", row.split(" ")[0].lower())
        model_dir, seconds = trained(
            run_dir,
            lambda run: train_stage2(
                train_csv, run, method_config, init_model=stage1, resume=True, verbose=2, allow_outside_root=True, val_data=validation_csv
            ),
        )
        t = method_config.train
        metrics = detection_metrics(fake_scores(model_dir, [p for p, _ in test]), labels, unseen)
        rows[row] = {"train_seconds": round(seconds, 1), "epochs": t.epochs, "steps_per_epoch": t.steps_per_epoch, **metrics}
        print(f"{row}: " + ", ".join(f"{k} {v}" for k, v in rows[row].items()), flush=True)
    table = markdown_table(rows, unseen)
    print(table)
    preset = zoo["preset"]["name"]
    report = {
        "preset": preset,
        "zoo": os.path.abspath(zoo["root"]),
        "config": args.config,
        "overrides": overrides,
        "stage1": stage1,
        "seen": [name for name in architectures if name not in unseen],
        "unseen": unseen,
        "test_images": {name: int(np.sum(labels == name)) for name in (REAL, *unseen)},
        "rows": rows,
    }
    write_results(args.out, report, f"Fake vs real on unseen {', '.join(unseen)} (zoo `{preset}`, config `{args.config}`, {len(test)} closed-set test images): %", table)


def markdown_table(rows: dict, unseen: list) -> str:
    columns = ["accuracy", "auc", "reals_passed", *(f"{name} caught" for name in unseen), *(f"{name} AUC" for name in unseen), "stage-2 minutes"]
    lines = ["| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row, result in rows.items():
        cells = [100 * result[c] for c in ("accuracy", "auc", "reals_passed")]
        cells += [100 * result[name]["caught"] for name in unseen] + [100 * result[name]["auc"] for name in unseen]
        lines.append(f"| {row} | " + " | ".join(f"{value:.1f}" for value in cells) + f" | {result['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
