"""The embedded default main job: make images, train, evaluate on generators never seen in training."""

import csv
import os
from dataclasses import dataclass

from tfdnadet.config import load_config
from tfdnadet.evaluation.evaluate import evaluate_dataset, write_evaluation
from tfdnadet.models.detector import load_detector
from tfdnadet.training.stage2 import train_stage2
from tfdnadet.zoo.testdata import make_test_dataset

ARCHITECTURES = ("progan", "mmdgan", "dcgan", "sngan")
TRAIN_SEEDS, TEST_SEED = (0, 1), 2


@dataclass
class QuickstartResult:
    run_dir: str
    metrics: dict
    files: dict


def run_quickstart(out_dir: str, verbose: int = 1) -> QuickstartResult:
    """Random-init generators of four architectures + real photos; train on seeds 0-1, test on seed 2."""
    data_dir = os.path.join(out_dir, "data")
    if not os.path.isfile(os.path.join(data_dir, "test.csv")):
        make_test_dataset(data_dir, ARCHITECTURES, (*TRAIN_SEEDS, TEST_SEED), images_per_model=32, image_size=32, real_images=96)
        _write_manifests(data_dir)
    config = load_config("tiny", {"train.epochs": 6, "train.steps_per_epoch": 15})
    run_dir = os.path.join(out_dir, "run")
    result = train_stage2(os.path.join(data_dir, "train.csv"), run_dir, config, resume=True, verbose=verbose)
    metrics = evaluate_dataset(load_detector(result.model_dir), os.path.join(data_dir, "test.csv"))
    files = write_evaluation(metrics, os.path.join(out_dir, "evaluation"), "unseen_seed")
    files["curves_png"] = os.path.join(run_dir, "curves.png")
    files["model"] = result.model_dir
    return QuickstartResult(run_dir, metrics, files)


def _write_manifests(data_dir: str) -> None:
    rows = {"train": [], "test": []}
    for dirpath, _, names in os.walk(data_dir):
        for name in sorted(n for n in names if n.endswith(".png")):
            relative = os.path.relpath(os.path.join(dirpath, name), data_dir)
            label = relative.split(os.sep)[0]
            unseen = f"seed{TEST_SEED}" in relative.split(os.sep) if label != "real" else int(name[:-4]) % 4 == 0
            rows["test" if unseen else "train"].append((relative, label))
    for split, split_rows in rows.items():
        with open(os.path.join(data_dir, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(split_rows)
