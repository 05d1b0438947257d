"""One verdict per image from all heads: `real`, one architecture, `multiple` or `unknown-generator` [Khoo 3.1-3.2].

The real/fake judge is the multiclass head (its top class is or is not `real`) or, in a model with only
one-vs-all heads, the binary head named `real`. Architectures come from the binary heads of architectures;
a model without any still answers with its multiclass label. The judge wins over the binary heads (Khoo:
the primary output is prioritised), so "judged real but some head positive" is a self-contradiction.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.heads import BinaryHead

REAL = "real"
MULTIPLE = "multiple"
UNKNOWN = "unknown-generator"
DEFAULT_THRESHOLD = 0.5


@dataclass
class Verdict:
    label: str  # real | <architecture> | multiple | unknown-generator
    architectures: list  # architecture heads that are positive, best score first
    judged_real: Optional[bool]  # None: the model has no real/fake judge
    heads: dict = field(default_factory=dict)  # binary head -> {"score", "threshold", "positive"}

    @property
    def self_contradiction(self) -> bool:
        return bool(self.judged_real) and bool(self.architectures)

    @property
    def failed_attribution(self) -> bool:
        return self.judged_real is False and not self.architectures


def binary_heads(detector: Detector) -> list:
    return [name for name, head in detector.heads.items() if head.kind == BinaryHead.kind]


def threshold_of(detector: Detector, name: str) -> float:
    return float(detector.head_info[name].get("threshold", DEFAULT_THRESHOLD))


def verdicts(detector: Detector, outputs: dict) -> list:
    """Per-head probabilities {head: [N, ...]} (as `Detector.predict` gives) -> one Verdict per image."""
    binary = binary_heads(detector)
    architecture_heads = [name for name in binary if name != REAL]
    count = len(next(iter(outputs.values()))) if outputs else 0
    scores = {name: np.asarray(outputs[name])[:, 0] for name in binary}
    multiclass_labels = _multiclass_labels(detector, outputs)
    results = []
    for i in range(count):
        heads = {name: _decision(scores[name][i], threshold_of(detector, name)) for name in binary}
        judged_real = _judged_real(multiclass_labels, heads, i)
        positive = sorted((n for n in architecture_heads if heads[n]["positive"]), key=lambda n: -heads[n]["score"])
        if judged_real:
            label = REAL
        elif not architecture_heads:
            label = multiclass_labels[i] if multiclass_labels is not None else UNKNOWN
        elif positive:
            label = positive[0] if len(positive) == 1 else MULTIPLE
        else:
            # With no judge, a failed attribution reads as real, as in Khoo's multiclass comparison.
            label = REAL if judged_real is None else UNKNOWN
        results.append(Verdict(label, positive, judged_real, heads))
    return results


def _multiclass_labels(detector: Detector, outputs: dict):
    if MULTICLASS not in outputs:
        return None
    names = detector.class_names
    return [names[i] for i in np.argmax(outputs[MULTICLASS], axis=1)]


def _judged_real(multiclass_labels, heads: dict, i: int) -> Optional[bool]:
    if multiclass_labels is not None:
        return multiclass_labels[i] == REAL
    if REAL in heads:
        return heads[REAL]["positive"]
    return None


def _decision(score, threshold: float) -> dict:
    return {"score": float(score), "threshold": threshold, "positive": bool(score >= threshold)}
