"""Evaluating one model on several labelled test sets at once: the rows of the paper's Table 2."""

import os
import re

from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_dataset

# {mode}_test.txt is the closed-set test; {mode}_test_cross_<kind>.txt are the cross tests [Table 1].
_CROSS = re.compile(r"_test_cross_([a-z]+)$")


def annotation_splits(folder: str) -> dict:
    """The official release's `{mode}_test/annotations` folder -> {split name: txt path}, closed-set first."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".txt")) if os.path.isdir(folder) else []
    if not files:
        raise TfdnadetError(f"No annotation .txt files in {folder}")
    splits = {}
    for name in files:
        stem = name[: -len(".txt")]
        cross = _CROSS.search(stem)
        splits[f"cross-{cross.group(1)}" if cross else ("closed-set" if stem.endswith("_test") else stem)] = os.path.join(folder, name)
    return dict(sorted(splits.items(), key=lambda item: (item[0] != "closed-set", item[0])))


def is_annotation_folder(path: str) -> bool:
    """A folder of annotation txt files rather than class folders."""
    if not os.path.isdir(path):
        return False
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    return bool(entries) and all(e.endswith(".txt") and os.path.isfile(os.path.join(path, e)) for e in entries)


def evaluate_splits(detector, splits: dict, batch_size: int = 16, class_names=None, allow_outside_root: bool = False) -> dict:
    """{split name: metrics} for each test set (accuracy, macro-F1, confusion matrix, ...)."""
    return {
        name: evaluate_dataset(detector, source, batch_size, class_names, allow_outside_root) for name, source in splits.items()
    }
