"""Robustness to test-time attacks [5.5, Table 5]: accuracy per attack, one row per test set.

Attacks are deterministic for a seed, and are applied to the decoded images at base size (after the
first resize of the paper's chain, where the training augmentation works too).
"""

import dataclasses
from typing import Optional

from tfdnadet.atomic import write_json
from tfdnadet.data.perturb import apply_attack
from tfdnadet.evaluation.evaluate import load_labelled, loaded_metrics
from tfdnadet.models.detector import Detector

CLEAN = "clean"


def attack_scores(detector: Detector, loaded, attacks: list, seed: int = 0, batch_size: int = 16) -> dict:
    """{'clean' and each attack: {'accuracy', 'macro_f1'}} on decoded, labelled images."""
    scores = {}
    for name in (CLEAN, *attacks):
        images = loaded.images if name == CLEAN else apply_attack(loaded.images, name, seed)
        metrics = loaded_metrics(detector, dataclasses.replace(loaded, images=images), batch_size)
        scores[name] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    return scores


def robustness_table(
    detector: Detector,
    test_sets: dict,
    attacks: list,
    seed: int = 0,
    batch_size: int = 16,
    class_names: Optional[list] = None,
    allow_outside_root: bool = False,
) -> dict:
    """Table 5: `test_sets` {row name: folder/manifest} x (clean + `attacks`), accuracy and macro-F1 per cell."""
    rows = {}
    for row, data in test_sets.items():
        loaded = load_labelled(detector, data, class_names, allow_outside_root)
        rows[row] = {
            "data": data,
            "count": int(len(loaded.labels)),
            "scores": attack_scores(detector, loaded, attacks, seed, batch_size),
            "skipped": [{"path": p, "reason": r} for p, r in loaded.failures],
        }
    return {"columns": [CLEAN, *attacks], "seed": seed, "rows": rows}


def write_robustness(table: dict, path: str) -> None:
    write_json(path, table)
