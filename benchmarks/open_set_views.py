"""Open set: does fitting the rejection Gaussian on views of the training images widen the known classes towards
new generators of their architectures more than towards new architectures?

A transposed image, or one with its colour channels reordered and inverted, is exactly what another generator of
the same architecture makes (`data.augment` ops `transpose`, `channels`; `symmetry` is exact only for evenly padded
layers), so each view is one more training generator per class, for free. For each set of views the Gaussian is
fitted on the training images plus their views (pooled features of --features-of, default the model itself) and
scored like `evaluate --open-set`: AUROC of the validation split (known classes against its unknown
architectures: the one figure that may choose) and of each known test split against every unknown image.

    python benchmarks/open_set_views.py --model OPEN_SET_RUN/model --zoo ZOO/zoo.json [--features-of STAGE1_RUN/model]
"""

import argparse
import dataclasses
import os

import numpy as np

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

from cross_test import RESULTS, write_results  # noqa: E402  (the script's own folder is on sys.path)

from tfdnadet.data.perturb import parse_augment, perturb  # noqa: E402
from tfdnadet.data.sources import read_dataset  # noqa: E402
from tfdnadet.evaluation.open_set import auroc, known_images, pooled_features, unknown_architectures, unknown_images  # noqa: E402
from tfdnadet.inference import load_for_detector  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.rejection import fit_gaussian, gaussian_knownness  # noqa: E402
from tfdnadet.zoo.build import TEST_SPLITS, TRAIN_SPLIT, VALIDATION_SPLIT, read_zoo  # noqa: E402

VIEWS = ("transpose", "channels", "symmetry")
VARIANTS = {
    "training images (the default)": (),
    "+ transpose": ("transpose",),
    "+ channels": ("channels",),
    "+ symmetry": ("symmetry",),
    "+ transpose, channels": ("transpose", "channels"),
    "+ all three": VIEWS,
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model trained without the --unknown architectures")
    parser.add_argument("--zoo", required=True, help="the zoo's zoo.json")
    parser.add_argument("--unknown", default="dcgan,stylegan2", help="the architectures held out of training")
    parser.add_argument("--features-of", default=None, help="the model whose pooled features the Gaussian reads (default: --model)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "open_set_views"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def view_images(images: np.ndarray, view: str) -> np.ndarray:
    """Every image under one view (random choices drawn from a fixed seed)."""
    return perturb(images, parse_augment([{"op": view, "p": 1.0}]), [7, VIEWS.index(view)]).numpy()


def load(detector, images):
    """The decoded images of an ImageList at the model's base size."""
    return load_for_detector(detector, images.paths, images.labels)


def zoo_features(detector, features_of, zoo: dict, unknown: list) -> dict:
    """Pooled features of the training images of known classes (labels in "train_labels") and of each of their views,
    of the validation split's known and unknown images, of each known test split and of every unknown image."""
    manifests = {split: os.path.join(zoo["root"], entry["manifest"]) for split, entry in zoo["splits"].items()}
    train = load(detector, known_images(manifests[TRAIN_SPLIT], detector.class_names))
    features = {TRAIN_SPLIT: pooled_features(features_of, train), "train_labels": train.labels}
    for view in VIEWS:
        features[view] = pooled_features(features_of, dataclasses.replace(train, images=view_images(train.images, view)))
    validation = read_dataset(manifests[VALIDATION_SPLIT])
    new = [i for i, label in enumerate(validation.labels) if validation.class_names[label] in unknown]
    features["validation unknown"] = pooled_features(features_of, load(detector, validation.subset(new)))
    for split in (VALIDATION_SPLIT, *TEST_SPLITS):
        features[split] = pooled_features(features_of, load(detector, known_images(manifests[split], detector.class_names)))
    features["unknown"] = pooled_features(features_of, load(detector, unknown_images(manifests, unknown)))
    return features


def view_rows(features: dict, class_names: list) -> dict:
    """{variant: {"validation", each test split, "all known": AUROC}} of the Gaussian fitted on the training images
    plus the variant's views."""
    rows = {}
    for name, views in VARIANTS.items():
        parts = [TRAIN_SPLIT, *views]
        fitted = fit_gaussian(np.concatenate([features[p] for p in parts]), np.tile(features["train_labels"], len(parts)), class_names)

        def knownness(split):
            return gaussian_knownness(features[split], fitted["means"], fitted["precision"]).numpy()

        unknown = knownness("unknown")
        row = {"validation": auroc(knownness(VALIDATION_SPLIT), knownness("validation unknown"))}
        row.update((split, auroc(knownness(split), unknown)) for split in TEST_SPLITS)
        row["all known"] = auroc(np.concatenate([knownness(split) for split in TEST_SPLITS]), unknown)
        rows[name] = row
    return rows


def table(rows: dict) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| Gaussian fitted on | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def main():
    args = parse_args()
    zoo, unknown = read_zoo(args.zoo), args.unknown.split(",")
    detector = load_detector(args.model)
    unknown_architectures(detector, zoo, unknown)  # checks the names
    features_of = load_detector(args.features_of) if args.features_of else detector
    rows = view_rows(zoo_features(detector, features_of, zoo, unknown), detector.class_names)
    text = table(rows)
    print(text)
    report = {"model": os.path.abspath(args.model), "features_of": os.path.abspath(args.features_of or args.model), "zoo": zoo["root"], "unknown": unknown, "rows": rows}
    write_results(args.out, report, f"Open-set AUROC with the Gaussian fitted on views of the training images; unknown: {', '.join(unknown)}", text)


if __name__ == "__main__":
    main()
