"""The cross-test protocol of the paper's Table 2 [5.2] on a mini GAN zoo: one row of test splits per model.

Closed-set, cross-seed, cross-loss, cross-finetune and cross-dataset, each scored by accuracy and
macro-F1 (over the classes the split holds), with a confusion-matrix PNG per split and one JSON file.
"""

import os

from tfdnadet.atomic import write_json
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import write_evaluation
from tfdnadet.evaluation.splits import evaluate_splits
from tfdnadet.zoo.build import TEST_SPLITS, read_zoo


def zoo_test_splits(zoo_path: str) -> dict:
    """{split: its CSV manifest} for the test splits a zoo holds, in the order of Table 2."""
    zoo = read_zoo(zoo_path)
    splits = {
        split: os.path.join(zoo["root"], zoo["splits"][split]["manifest"]) for split in TEST_SPLITS if split in zoo["splits"]
    }
    if not splits:
        raise TfdnadetError(f"The zoo at {zoo['root']} has no test split ({', '.join(TEST_SPLITS)}).")
    return splits


def evaluate_protocol(detector, zoo_path: str, batch_size: int = 16) -> dict:
    """{split: metrics} of a model on every test split of a zoo (zoo.json or its directory)."""
    return evaluate_splits(detector, zoo_test_splits(zoo_path), batch_size)


def protocol_summary(results: dict) -> dict:
    """{split: {"count", "accuracy", "macro_f1"}}: the numbers of one Table 2 row."""
    return {split: {key: m[key] for key in ("count", "accuracy", "macro_f1")} for split, m in results.items()}


def write_protocol(results: dict, out_dir: str, model: str, zoo_path: str) -> dict:
    """Writes SPLIT.json + SPLIT_confusion.png per split and protocol.json (the summary); returns the paths."""
    files = {split: write_evaluation(metrics, out_dir, split) for split, metrics in results.items()}
    summary_path = os.path.join(out_dir, "protocol.json")
    summary = {"model": os.path.abspath(model), "zoo": os.path.abspath(zoo_path), "splits": protocol_summary(results), "files": files}
    write_json(summary_path, summary)
    return {"protocol_json": summary_path, **{f"{split}_confusion_png": paths["confusion_png"] for split, paths in files.items()}}
