"""One verdict per image from all heads: `real`, one architecture, `multiple` or `unknown-generator` [Khoo 3.1-3.2].

The rule (the SavedModel's `verdict` output is the same rule in graph ops, tfdnadet.serving.graph):
1. The real/fake judge is the multiclass head (its top class is or is not `real`) or, in a model with only
   one-vs-all heads, the binary head named `real`. A judged-real image is `real`: the judge wins over the binary
   heads (Khoo: the primary output is prioritised), so "judged real but some head positive" is a self-contradiction.
2. Otherwise the answers are the positive binary heads of architectures, plus the multiclass head's architecture
   when the model's rejection rule accepts the image (tfdnadet.rejection; always, without a rule). A positive head
   of an architecture the multiclass head does not know overrules it: that head was trained with the multiclass
   classes as negatives, while the multiclass head never saw the head's architecture.
3. One answer is the verdict, several are `multiple`, none is `unknown-generator` (or `real` in a model without
   any judge, as in Khoo's multiclass comparison).
A rejected multiclass answer, `real` included, counts as no answer.
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
KNOWNNESS = "knownness"  # predict outputs and SavedModel outputs: the rejection score of each image


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


def newcomer_heads(detector: Detector) -> list:
    """Binary heads of architectures that the multiclass head does not know (all of them without one)."""
    known = set(detector.class_names) if MULTICLASS in detector.heads else set()
    return [name for name in binary_heads(detector) if name != REAL and name not in known]


def rejection_threshold(detector: Detector) -> Optional[float]:
    return float(detector.rejection["threshold"]) if detector.rejection else None


def verdicts(detector: Detector, outputs: dict) -> list:
    """Per-head probabilities {head: [N, ...]} (as `predict_loaded` gives, with KNOWNNESS when the model has a
    rejection rule) -> one Verdict per image."""
    binary = binary_heads(detector)
    architecture_heads = [name for name in binary if name != REAL]
    newcomers = set(newcomer_heads(detector))
    count = len(next(iter(outputs.values()))) if outputs else 0
    scores = {name: np.asarray(outputs[name])[:, 0] for name in binary}
    multiclass_labels = _multiclass_labels(detector, outputs)
    accepted = _accepted(detector, outputs, count)
    results = []
    for i in range(count):
        heads = {name: _decision(scores[name][i], threshold_of(detector, name)) for name in binary}
        judged_real = _judged_real(multiclass_labels, heads, i)
        positive = sorted((n for n in architecture_heads if heads[n]["positive"]), key=lambda n: -heads[n]["score"])
        answers = list(positive)
        multiclass = multiclass_labels[i] if multiclass_labels is not None and accepted[i] else None
        if multiclass is not None and not newcomers.intersection(positive) and multiclass not in answers:
            answers.append(multiclass)
        if judged_real and accepted[i]:
            label = REAL
        elif len(answers) == 1:
            label = answers[0]
        elif answers:
            label = MULTIPLE
        else:
            label = REAL if judged_real is None else UNKNOWN
        results.append(Verdict(label, positive, judged_real, heads))
    return results


def _accepted(detector: Detector, outputs: dict, count: int) -> np.ndarray:
    threshold = rejection_threshold(detector)
    if threshold is None:
        return np.ones(count, bool)
    if KNOWNNESS not in outputs:
        raise ValueError("This model has a rejection rule: its outputs need the knownness score (predict_loaded gives it).")
    return np.asarray(outputs[KNOWNNESS]) >= threshold


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
