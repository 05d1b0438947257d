"""Patches/s of the DNA-Det train step (SupCon + CE, uncertainty weighted) vs a plain Keras fit.

Both run `model.fit` on the same in-memory batch of patches with the same encoder; the reference is
`keras.Sequential([encoder, Dense])` with sparse cross-entropy, compiled with Keras defaults.

    python benchmarks/train_throughput.py [--configs cpu paper] [--classes 5] [--images-per-class 4] [--steps 10]
"""

import argparse
import os

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.models.backbones import create_backbone  # noqa: E402
from tfdnadet.training.trainer import build_patch_model  # noqa: E402
from timing import fit_seconds  # noqa: E402


def patches_per_second(models: dict, patches, labels, steps: int, repeats: int) -> dict:
    """Best of `repeats` timed runs per model, the models taking turns so load on the machine hits all alike."""
    dataset = tf.data.Dataset.from_tensors((patches, labels)).repeat()
    for model in models.values():
        model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # trace and warm up
    best = {name: 0.0 for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = max(best[name], steps * len(labels) / fit_seconds(model, dataset, steps))
    return best


def plain_reference(config, num_classes):
    encoder = create_backbone(config.model.backbone, width=config.model.width, name="encoder")
    model = keras.Sequential([encoder, keras.layers.Dense(num_classes, name="logits")])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def run(name, classes, images_per_class, steps, repeats):
    config = load_config(name, {"data.images_per_class": images_per_class, "train.precision": "float32"})
    d = config.data
    count = classes * images_per_class * d.patches_per_image
    rng = np.random.default_rng(0)
    patches = rng.uniform(-1, 1, (count, d.patch_size, d.patch_size, 3)).astype("float32")
    labels = np.repeat(np.arange(classes), count // classes).astype("int32")
    models = {"plain_fit": plain_reference(config, classes), "ours": build_patch_model(config, classes)}
    config.train.jit_compile = True
    models["ours_xla"] = build_patch_model(config, classes)
    rows = {"config": name, "width": config.model.width, "patch_size": d.patch_size, "batch_patches": count}
    rows.update(patches_per_second(models, patches, labels, steps, repeats))
    rows["ratio"] = rows["ours"] / rows["plain_fit"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--images-per-class", type=int, default=4, help="k; the paper uses 32 (too heavy for a CPU)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train_throughput.json"))
    args = parser.parse_args()
    results = [run(name, args.classes, args.images_per_class, args.steps, args.repeats) for name in args.configs]
    header = f"{'config':8} {'width':>5} {'patch':>5} {'batch':>6} {'plain fit':>10} {'ours':>10} {'ours+XLA':>10} {'ratio':>6}"
    print("patches/s of one train step, best of each model's timed runs (higher is better); ratio = ours / plain fit")
    print(header)
    for r in results:
        print(
            f"{r['config']:8} {r['width']:5.2f} {r['patch_size']:5d} {r['batch_patches']:6d} {r['plain_fit']:10.1f} "
            f"{r['ours']:10.1f} {r['ours_xla']:10.1f} {r['ratio']:6.2f}"
        )
    write_json(args.out, {"device": tf.config.list_logical_devices()[0].device_type, "args": vars(args), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
