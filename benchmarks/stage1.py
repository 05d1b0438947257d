"""Stage 1 on a config's budget: macro-F1 on held-out transformed photos, and input pipeline vs train step.

The model trains on the built-in photos of content set A (written to a folder, so `--data DIR` is the path
measured) and is tested on transformed crops of content set B, which it never saw. Throughput compares the
samples/s the stage-1 tf.data pipeline produces with the samples/s one train step consumes (in isolation).

    python benchmarks/stage1.py [--config cpu] [--epochs N] [--test-images 1700] [--steps 5] [--repeats 3]
"""

import argparse
import os
import tempfile
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.data.pipeline import LoadedImages  # noqa: E402
from tfdnadet.data.transforms import TransformBank, make_transform_dataset, transform_images  # noqa: E402
from tfdnadet.evaluation.metrics import classification_metrics  # noqa: E402
from tfdnadet.inference import predict_loaded  # noqa: E402
from tfdnadet.models.detector import MULTICLASS  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.training.stage1 import natural_crops, train_stage1  # noqa: E402
from tfdnadet.training.trainer import build_patch_model  # noqa: E402
from tfdnadet.zoo.photos import load_photos, random_crops  # noqa: E402
from timing import fit_seconds  # noqa: E402

# The paper's four families [4.1]; the bank's operations split compression and blurring in two.
FAMILIES = {
    "jpeg": "compression",
    "double_jpeg": "compression",
    "gaussian_blur": "blurring",
    "median_blur": "blurring",
    "resample": "resampling",
    "noise": "noising",
}


def throughput(config, bank, steps, repeats):
    """Best-of-`repeats` (pipeline samples/s, train-step samples/s), taking turns; a sample is one base-size image.

    Each pipeline turn starts a fresh iterator (so no batches prefetched during a train turn count) and is
    closed before the train turn (so its background threads do not slow the train step).
    """
    s = config.stage1
    crops = natural_crops(None, s.crops, config.data.base_size, config.train.seed, config.data.max_pixels)
    dataset = make_transform_dataset(crops, bank, config.data, s.images_per_class, seed=0)
    samples = s.images_per_class * len(bank)
    model = build_patch_model(config, len(bank))
    fixed = dataset.take(1).cache().repeat()
    model.fit(fixed, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace and warm up
    pipeline, train = [], []
    for _ in range(repeats):
        iterator = iter(dataset)
        next(iterator)  # start-up
        start = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        pipeline.append(steps * samples / (time.perf_counter() - start))
        del iterator
        train.append(steps * samples / fit_seconds(model, fixed, steps))
    return max(pipeline), max(train)


def write_photos(folder):
    for index, photo in enumerate(load_photos("A")):
        Image.fromarray(photo).save(os.path.join(folder, f"{index:02d}.png"))


def held_out_metrics(model_dir, bank, count, base_size):
    """Metrics on `count` crops of content set B, class i % C applied to crop i."""
    labels = np.arange(count, dtype=np.int32) % len(bank)
    images = transform_images(random_crops(list(load_photos("B")), count, base_size, seed=12345), labels, bank)
    detector = load_detector(model_dir)
    predicted = np.argmax(predict_loaded(detector, LoadedImages(images, labels, [], []), 64)[MULTICLASS], axis=1)
    ops = np.array([t.op for t in bank.transforms])
    families = np.array([FAMILIES[op] for op in ops])
    classes = classification_metrics(labels, predicted, bank.class_names)
    by_op = sorted(set(ops))
    by_family = sorted(set(families))
    op_metrics = classification_metrics(
        np.searchsorted(by_op, ops[labels]), np.searchsorted(by_op, ops[predicted]), by_op
    )
    family_metrics = classification_metrics(
        np.searchsorted(by_family, families[labels]), np.searchsorted(by_family, families[predicted]), by_family
    )
    return {
        "classes": {"count": len(bank), "accuracy": classes["accuracy"], "macro_f1": classes["macro_f1"], "chance": 1 / len(bank)},
        "operations": {"count": len(by_op), "accuracy": op_metrics["accuracy"], "macro_f1": op_metrics["macro_f1"], "chance": 1 / len(by_op)},
        "families": {"count": len(by_family), "accuracy": family_metrics["accuracy"], "macro_f1": family_metrics["macro_f1"], "chance": 1 / len(by_family)},
        "per_operation_recall": {op: op_metrics["per_class"][op]["recall"] for op in by_op},
        "test_images": count,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="stage1.epochs (default: the config's)")
    parser.add_argument("--test-images", type=int, default=1700)
    parser.add_argument("--steps", type=int, default=5, help="batches timed per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="throughput measurements, best kept (the machine is shared)")
    parser.add_argument("--skip-training", action="store_true", help="only measure throughput")
    parser.add_argument("--out", default=None, help="default results/stage1.json, with --skip-training results/stage1_throughput.json")
    args = parser.parse_args()
    args.out = args.out or os.path.join(os.path.dirname(__file__), "results", "stage1_throughput.json" if args.skip_training else "stage1.json")
    config = load_config(args.config, {"stage1.epochs": args.epochs})
    bank = TransformBank(config.stage1.transforms, config.data.base_size)
    result = {"device": tf.config.list_logical_devices()[0].device_type, "args": vars(args)}

    pipeline, train = throughput(config, bank, args.steps, args.repeats)
    result["throughput"] = {"pipeline_samples_per_s": pipeline, "train_step_samples_per_s": train, "ratio": pipeline / train}
    print(f"{'samples/s':24} {'pipeline':>10} {'train step':>10} {'ratio':>6}")
    print(f"{args.config + ' (' + str(len(bank)) + ' classes)':24} {pipeline:10.1f} {train:10.1f} {pipeline / train:6.2f}")

    if not args.skip_training:
        with tempfile.TemporaryDirectory() as work:
            photos = os.path.join(work, "photos_A")
            os.makedirs(photos)
            write_photos(photos)
            start = time.perf_counter()
            run = train_stage1(photos, os.path.join(work, "run"), config, verbose=2)
            result["training"] = {"epochs": run.epochs_completed, "steps": run.steps, "seconds": time.perf_counter() - start}
            result["held_out"] = held_out_metrics(run.model_dir, bank, args.test_images, config.data.base_size)
        print(f"\ntrained {run.epochs_completed} epochs, {run.steps} steps in {result['training']['seconds']:.0f} s")
        print(f"{'held-out content B':24} {'labels':>6} {'accuracy':>9} {'macro-F1':>9} {'chance':>7}")
        for level in ("classes", "operations", "families"):
            m = result["held_out"][level]
            print(f"{level:24} {m['count']:6d} {m['accuracy']:9.3f} {m['macro_f1']:9.3f} {m['chance']:7.3f}")
        print("recall per operation: " + ", ".join(f"{k} {v:.2f}" for k, v in result["held_out"]["per_operation_recall"].items()))

    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
