"""Does a head added for one generator recognise its architecture in other generators? And what does it cost?

On a mini GAN zoo: a base model is trained on the train split without architecture NEW (not timed); then, on the
same images, one run each of `add_head(NEW)` (positives: NEW's train-split images, one generator; negatives: the
other classes' train-split images) and `train_stage2` on the whole train split (NEW included), both end to end. Each answer's recall of NEW is reported
on images of NEW's architecture from: the same generator (closed-set), another seed on the same content
(cross-seed), the same seed finetuned on other content (cross-finetune), and another seed AND another content
(the validation split's finetuned model), with the head's false-positive rate on the other closed-set classes.
The head is also scored by AUC against the other classes' closed-set images (1.0: some threshold takes all of NEW's
images and none of the others; `heads calibrate` on held-out generators sets one). The retrained model keeps its last epoch (the validation split holds one of the tested generators).

    python benchmarks/add_head.py --zoo ZOO_DIR [--new progan] [--config cpu] [--init STAGE1_MODEL] [--work DIR]
"""

import argparse
import csv
import os
import tempfile
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.data.sources import list_image_files, read_dataset  # noqa: E402
from tfdnadet.errors import TfdnadetError  # noqa: E402
from tfdnadet.evaluation.open_set import auroc  # noqa: E402
from tfdnadet.inference import load_for_detector, predict_loaded  # noqa: E402
from tfdnadet.models.detector import MULTICLASS  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.add_head import add_head  # noqa: E402
from tfdnadet.training.stage2 import train_stage2  # noqa: E402
from tfdnadet.zoo.build import OTHER_CONTENT, TRAIN_CONTENT, TRAIN_SPLIT, VALIDATION_SPLIT, read_zoo  # noqa: E402

# (row, split of the zoo model, its content, whether its seed is the train model's)
TESTS = (
    ("same generator (closed-set)", "closed-set", TRAIN_CONTENT, True),
    ("other seed, same content (cross-seed)", "cross-seed", TRAIN_CONTENT, False),
    ("same seed, other content (cross-finetune)", "cross-finetune", OTHER_CONTENT, True),
    ("other seed AND other content (validation)", VALIDATION_SPLIT, OTHER_CONTENT, False),
)


def test_folders(zoo: dict, new: str) -> dict:
    """{row: folder of NEW's images} for each test the zoo can make (a preset without NEW's cross-seed lacks that row)."""
    train_seed = next(m["seed"] for m in zoo["models"] if m["split"] == TRAIN_SPLIT and m["architecture"] == new)
    folders = {}
    for row, split, content, same_seed in TESTS:
        for m in zoo["models"]:
            image_split = split if split != "closed-set" else TRAIN_SPLIT
            if (m["architecture"], m["split"], m["content"], m["seed"] == train_seed) == (new, image_split, content, same_seed):
                folders[row] = os.path.join(zoo["root"], m["folders"][split])
    return folders


def base_manifest(zoo: dict, new: str, path: str) -> str:
    """The train split less NEW, as a manifest of absolute paths."""
    images = read_dataset(os.path.join(zoo["root"], zoo["splits"][TRAIN_SPLIT]["manifest"]))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows((p, images.class_names[label]) for p, label in zip(images.paths, images.labels) if images.class_names[label] != new)
    return path


def scores(detector, folder: str) -> dict:
    return predict_loaded(detector, load_for_detector(detector, list_image_files(folder)))


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run(zoo_path: str, new: str, config_name: str, init, work: str) -> dict:
    zoo = read_zoo(zoo_path)
    if new not in zoo["class_names"]:
        raise TfdnadetError(f"--new {new}: the zoo's architectures are {', '.join(c for c in zoo['class_names'] if c != 'real')}.")
    config = load_config(config_name, {"data.base_size": zoo["image_size"], "train.select_on": "last"})
    folders = test_folders(zoo, new)
    base_csv = base_manifest(zoo, new, os.path.join(work, "base.csv"))
    base = train_stage2(base_csv, os.path.join(work, "base"), config, init_model=init, allow_outside_root=True, verbose=0).model_dir
    train_folders = {c: os.path.join(zoo["root"], TRAIN_SPLIT, c) for c in zoo["splits"][TRAIN_SPLIT]["classes"]}
    negatives = tuple(folder for c, folder in train_folders.items() if c != new)  # the base model's training images
    head_info, head_seconds = timed(add_head, base, new, train_folders[new], negatives)
    train_csv = os.path.join(zoo["root"], zoo["splits"][TRAIN_SPLIT]["manifest"])
    retrained, retrain_seconds = timed(train_stage2, train_csv, os.path.join(work, "retrain"), config, init_model=init, verbose=0)
    with_head, retrained_model = load_detector(base), load_detector(retrained.model_dir)
    threshold, new_index = head_info["threshold"], retrained_model.class_names.index(new)
    others = [os.path.join(zoo["root"], "closed-set", c) for c in zoo["splits"]["closed-set"]["classes"] if c != new]
    other_scores = np.concatenate([scores(with_head, folder)[new][:, 0] for folder in others])
    rows = {}
    for row, folder in folders.items():
        head_scores = scores(with_head, folder)[new][:, 0]
        retrained_classes = np.argmax(scores(retrained_model, folder)[MULTICLASS], axis=1)
        rows[row] = {
            "images": len(head_scores),
            "head_recall": float(np.mean(head_scores >= threshold)),
            "head_auc": auroc(head_scores, other_scores),  # against the other classes' closed-set images: any threshold
            "retrained_recall": float(np.mean(retrained_classes == new_index)),
        }
    return {
        "zoo": os.path.abspath(zoo["root"]),
        "new": new,
        "config": config_name,
        "init": init,
        "add_head_seconds": head_seconds,
        "retrain_seconds": retrain_seconds,
        "ratio": retrain_seconds / head_seconds,
        "head_threshold": threshold,
        "head_false_positive_rate": float(np.mean(other_scores >= threshold)),
        "recall": rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True, help="a zoo directory with a validation split (tfdnadet zoo build)")
    parser.add_argument("--new", default="progan", help="the architecture the head is added for (left out of the base model)")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--init", default=None, help="initialise both models' encoders from this model directory (e.g. stage 1)")
    parser.add_argument("--work", default=None, help="runs (default: a temporary folder)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "add_head.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        os.makedirs(work, exist_ok=True)
        r = run(args.zoo, args.new, args.config, args.init, work)
    print(f"adding '{args.new}' (one generator's images) to a model of the zoo's other classes vs retraining with the new class")
    print(f"add-head {r['add_head_seconds']:.1f} s, retrain {r['retrain_seconds']:.1f} s: ratio {r['ratio']:.1f}x")
    print(f"{'images of ' + args.new:44} {'n':>5} {'head recall':>12} {'head AUC':>9} {'retrained recall':>17}")
    for row, v in r["recall"].items():
        print(f"{row:44} {v['images']:5d} {v['head_recall']:12.2f} {v['head_auc']:9.3f} {v['retrained_recall']:17.2f}")
    print(f"head false-positive rate on the other closed-set classes: {r['head_false_positive_rate']:.2f} (threshold {r['head_threshold']:.2f})")
    write_json(args.out, {"device": tf.config.list_logical_devices()[0].device_type, "args": vars(args), "result": r})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
