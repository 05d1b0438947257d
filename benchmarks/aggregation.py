"""How a patch-grid model judges an image: the grid (stride, scales) and the rule that makes its cells' answers one.

Each trained model is re-judged under every variant (`Detector.with_preprocessing`: no retraining) on validation
generator models and on the zoo's test splits; the table holds the mean over the models. Validation decides: a
model whose run chose its epoch on one half of the validation models is scored on the other half
(`--model DIR:MANIFEST`), as in benchmarks/sweep.py.

    python benchmarks/aggregation.py --zoo ZOO_DIR --model RUN/model[:VALIDATION_MANIFEST] ... [--out PREFIX]
"""

import argparse
import os
import sys

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.errors import TfdnadetError  # noqa: E402
from tfdnadet.evaluation.evaluate import load_labelled, loaded_metrics  # noqa: E402
from tfdnadet.evaluation.protocol import zoo_test_splits  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402
from tfdnadet.zoo.build import VALIDATION_SPLIT, read_zoo  # noqa: E402

# name -> preprocessing changes; "trained" is the model's own (the cpu config: 32 px cells, no overlap, mean probability)
VARIANTS = {
    "trained": {},
    "mean_logit": {"aggregation": "mean_logit"},
    "vote": {"aggregation": "vote"},
    "overlap (stride 16)": {"grid_stride": 16},
    "overlap, mean_logit": {"grid_stride": 16, "aggregation": "mean_logit"},
    "two scales (1, 0.5)": {"grid_scales": [1.0, 0.5]},
}


def parse_model(text: str, zoo: dict) -> tuple:
    """'DIR[:MANIFEST]' -> (model dir, validation manifest: MANIFEST or the zoo's validation split)."""
    model, _, manifest = text.partition(":")
    return model, manifest or os.path.join(zoo["root"], zoo["splits"][VALIDATION_SPLIT]["manifest"])


def score_model(model: str, validation: str, test_splits: dict, variants: dict) -> dict:
    """{variant: {split: accuracy %}} of one model, its images decoded once."""
    detector = load_detector(model)
    data = {"validation": validation, **test_splits}
    loaded = {split: load_labelled(detector, path, allow_outside_root=True) for split, path in data.items()}
    scores = {}
    for name, changes in variants.items():
        variant = detector.with_preprocessing(**changes)
        scores[name] = {split: 100 * loaded_metrics(variant, images)["accuracy"] for split, images in loaded.items()}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--model", action="append", required=True, help="RUN/model[:VALIDATION_MANIFEST]; repeat for more")
    parser.add_argument("--out", default="benchmarks/results/aggregation")
    args = parser.parse_args()
    try:
        zoo = read_zoo(args.zoo)
        test_splits = zoo_test_splits(args.zoo)
        per_model = {}
        for index, text in enumerate(args.model, 1):
            model, validation = parse_model(text, zoo)
            print(f"model {index}/{len(args.model)}: {model}", flush=True)
            per_model[model] = {"validation_data": validation, "scores": score_model(model, validation, test_splits, VARIANTS)}
    except TfdnadetError as error:
        sys.exit(f"error: {error}")
    splits = ["validation", *test_splits]
    mean = {name: {s: float(np.mean([m["scores"][name][s] for m in per_model.values()])) for s in splits} for name in VARIANTS}
    print(f"\nAccuracy %, mean of {len(per_model)} model(s):\n")
    print("| variant | " + " | ".join(splits) + " |")
    print("|---|" + "---|" * len(splits))
    for name in VARIANTS:
        print(f"| {name} | " + " | ".join(f"{mean[name][s]:.2f}" for s in splits) + " |")
    write_json(args.out + ".json", {"zoo": os.path.abspath(args.zoo), "variants": VARIANTS, "mean": mean, "models": per_model})
    print(f"\nwrote {args.out}.json")


if __name__ == "__main__":
    main()
