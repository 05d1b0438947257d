"""Seconds to add a one-vs-all head on the frozen backbone vs retraining the multiclass model with the new class.

Mini-zoo images (random-init generators): a base model is trained on KNOWN + real (not timed); then, on the same
images, one run each of `add_head(NEW)` and `train_stage2` on KNOWN + NEW + real, both end to end (decoding,
tracing, training, writing). Held-out generator seeds give each answer's recall of NEW, for context.

    python benchmarks/add_head.py [--config cpu] [--images 32] [--size 64]
"""

import argparse
import csv
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.evaluation.evaluate import evaluate_dataset  # noqa: E402
from tfdnadet.evaluation.heads import evaluate_heads  # noqa: E402
from tfdnadet.evaluation.heads import calibrate_head  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.add_head import add_head  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.testdata import make_test_dataset  # noqa: E402

KNOWN, NEW = ("progan", "dcgan"), "stylegan2"
TRAIN_SEEDS, CALIBRATION_SEED, TEST_SEED = (0, 1), 3, 2


def make_data(root: str, images: int, size: int) -> dict:
    """Generator seeds 0-1 for training, 3 for calibrating the head's threshold, 2 for testing; manifests for each."""
    make_test_dataset(root, (*KNOWN, NEW), (*TRAIN_SEEDS, TEST_SEED, CALIBRATION_SEED), images, size, real_images=3 * images)
    rows = {"base": [], "all": [], "calibration": [], "test": []}
    for dirpath, _, names in os.walk(root):
        for name in sorted(n for n in names if n.endswith(".png")):
            relative = os.path.relpath(os.path.join(dirpath, name), root)
            parts = relative.split(os.sep)
            label = parts[0]
            if label == "real":  # a third of the crops each way
                split = ("train", "test", "calibration")[int(name[:-4]) % 3]
            else:
                split = {f"seed{TEST_SEED}": "test", f"seed{CALIBRATION_SEED}": "calibration"}.get(parts[1], "train")
            if split != "train":
                rows[split].append((relative, label))
            else:
                rows["all"].append((relative, label))
                if label != NEW:
                    rows["base"].append((relative, label))
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = os.path.join(root, f"{split}.csv")
        with open(paths[split], "w", newline="") as f:
            csv.writer(f).writerows([("path", "label"), *split_rows])
    return paths


def positives_folder(root: str) -> str:
    """NEW's training seeds only (the head must not see the test or calibration seeds)."""
    folder = os.path.join(root, "positives", NEW)
    for seed in TRAIN_SEEDS:
        os.makedirs(folder, exist_ok=True)
        os.symlink(os.path.join(root, NEW, f"seed{seed}"), os.path.join(folder, f"seed{seed}"))
    return folder


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run(config_name: str, images: int, size: int, work: str) -> dict:
    config = load_config(config_name, {"data.base_size": size})
    data = make_data(os.path.join(work, "data"), images, size)
    base = train_stage2(data["base"], os.path.join(work, "base"), config, verbose=0).model_dir
    head_info, head_seconds = timed(add_head, base, NEW, positives_folder(os.path.join(work, "data")))
    retrained, retrain_seconds = timed(train_stage2, data["all"], os.path.join(work, "retrain"), config, verbose=0)
    calibrate_head(base, NEW, data["calibration"])
    head_report = evaluate_heads(load_detector(base), data["test"])
    retrain_report = evaluate_dataset(load_detector(retrained.model_dir), data["test"])
    return {
        "config": config_name,
        "images_per_generator": images,
        "add_head_seconds": head_seconds,
        "add_head_steps": head_info["steps"],
        "retrain_seconds": retrain_seconds,
        "retrain_steps": retrained.steps,
        "ratio": retrain_seconds / head_seconds,
        "head_recall": head_report["heads"][NEW]["recall"],
        "head_precision": head_report["heads"][NEW]["precision"],
        "head_auc": head_report["heads"][NEW]["auc"],
        "retrained_recall": retrain_report["per_class"][NEW]["recall"],
        "retrained_precision": retrain_report["per_class"][NEW]["precision"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--images", type=int, default=32, help="images per generator (and 3x as many real crops)")
    parser.add_argument("--size", type=int, default=64, help="image size of the generators (data.base_size)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "add_head.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        r = run(args.config, args.images, args.size, work)
    print(f"adding '{NEW}' to a model of {', '.join(KNOWN)} + real vs retraining it with the new class (one run each)")
    print(f"{'method':28} {'seconds':>8} {'steps':>6} {'recall':>7} {'precision':>9}")
    print(f"{'add-head (frozen backbone)':28} {r['add_head_seconds']:8.1f} {r['add_head_steps']:6d} {r['head_recall']:7.2f} {r['head_precision']:9.2f}")
    print(f"{'retrain multiclass':28} {r['retrain_seconds']:8.1f} {r['retrain_steps']:6d} {r['retrained_recall']:7.2f} {r['retrained_precision']:9.2f}")
    print(f"ratio retrain / add-head: {r['ratio']:.1f}x   (recall/precision of '{NEW}' on held-out generator seed {TEST_SEED})")
    write_json(args.out, {"device": tf.config.list_logical_devices()[0].device_type, "args": vars(args), "result": r})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
