"""What `tfdnadet evaluate` does with its options: which evaluation runs, and which files it writes.

Exactly one of `data` (labelled images, or a folder of annotation txt splits) and `protocol` (a zoo's zoo.json)
is given. The result holds one of: per-split metrics (protocol, annotation folder), open-set metrics (`open_set`,
with a protocol), a robustness table (`attack`: one row for `data`, or one per test split of a protocol), or one
data set's metrics (plain, or with a `report`). Options that would be ignored by the evaluation chosen are errors.
"""

import os
from dataclasses import dataclass, field
from typing import Optional

from tfdnadet.data.perturb import parse_attacks
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_dataset, write_evaluation
from tfdnadet.evaluation.open_set import evaluate_open_set, write_open_set
from tfdnadet.evaluation.protocol import evaluate_protocol, write_protocol, zoo_test_splits
from tfdnadet.evaluation.report import TSNE_SAMPLES, evaluate_with_report
from tfdnadet.evaluation.robustness import robustness_table, write_robustness
from tfdnadet.evaluation.splits import annotation_splits, evaluate_splits, is_annotation_folder

BATCH_SIZE = 16


@dataclass
class EvaluationRequest:
    data: Optional[str] = None
    protocol: Optional[str] = None
    out_dir: Optional[str] = None  # evaluation.json + confusion PNG (per split), protocol.json, robustness.json
    batch_size: int = BATCH_SIZE
    class_names: Optional[list] = None  # names of integer labels (annotation txt)
    attack: Optional[str] = None  # Table 5: comma-separated attacks or "all"
    attack_seed: int = 0
    allow_outside_root: bool = False
    report_dir: Optional[str] = None  # report.md + report.html
    run_dir: Optional[str] = None  # the training run whose curves the report shows
    tsne_samples: int = TSNE_SAMPLES
    open_set: bool = False  # with a protocol: known test splits vs the architectures held out of training
    unknown: Optional[list] = None  # with open_set: the held-out architectures (default: the zoo's ones the model lacks)
    score: Optional[str] = None  # with open_set: the rejection score (default: the model's own)

    def __post_init__(self):
        """A request that names no data, or options that the chosen evaluation would not use, is refused here,
        before any model is loaded."""
        if (self.data is None) == (self.protocol is None):
            raise TfdnadetError("Give either --data DATA or --protocol ZOO_DIR/zoo.json.")
        if (self.open_set or self.unknown or self.score) and not (self.open_set and self.protocol):
            raise TfdnadetError("--unknown and --score go with --open-set, and --open-set with --protocol ZOO_DIR/zoo.json.")
        conflicts = (
            ("--report", "--protocol", self.report_dir and self.protocol),
            ("--report", "--attack", self.report_dir and self.attack),
            ("--attack", "--open-set", self.attack and self.open_set),
            ("--classes", "--protocol", self.class_names and self.protocol),
        )
        for option, other, both in conflicts:
            if both:
                raise TfdnadetError(f"{option} cannot be combined with {other}: evaluate one way at a time.")


@dataclass
class EvaluationResult:
    splits: Optional[dict] = None  # {split: metrics}: the protocol's or an annotation folder's test splits
    robustness: Optional[dict] = None  # robustness_table(): accuracy per attack and test set
    metrics: Optional[dict] = None  # one data set's metrics
    open_set: Optional[dict] = None  # evaluate_open_set(): AUROC, OSCR, false rejection per known split
    written: list = field(default_factory=list)  # every file written, in order


def run_evaluation(detector, model_dir: str, request: EvaluationRequest) -> EvaluationResult:
    """Run the evaluation `request` asks for on `detector` (loaded from `model_dir`) and write its files."""
    if request.open_set:
        return _open_set(detector, model_dir, request)
    if request.attack:
        return _robustness(detector, request)
    if request.protocol:
        return _protocol(detector, model_dir, request)
    if request.report_dir:
        return _report(detector, model_dir, request)
    if is_annotation_folder(request.data):
        return _annotation_splits(detector, request)
    metrics = evaluate_dataset(detector, request.data, request.batch_size, request.class_names, request.allow_outside_root)
    return EvaluationResult(metrics=metrics, written=_write_metrics(metrics, request.out_dir))


def _protocol(detector, model_dir: str, request: EvaluationRequest) -> EvaluationResult:
    results = evaluate_protocol(detector, request.protocol, request.batch_size)
    written = list(write_protocol(results, request.out_dir, model_dir, request.protocol).values()) if request.out_dir else []
    return EvaluationResult(splits=results, written=written)


def _open_set(detector, model_dir: str, request: EvaluationRequest) -> EvaluationResult:
    results = evaluate_open_set(detector, request.protocol, request.unknown, request.score, request.batch_size)
    written = list(write_open_set(results, request.out_dir, model_dir).values()) if request.out_dir else []
    return EvaluationResult(open_set=results, written=written)


def _annotation_splits(detector, request: EvaluationRequest) -> EvaluationResult:
    splits = annotation_splits(request.data)
    results = evaluate_splits(detector, splits, request.batch_size, request.class_names, request.allow_outside_root)
    written = [path for name, metrics in results.items() for path in _write_metrics(metrics, request.out_dir, name)]
    return EvaluationResult(splits=results, written=written)


def _robustness(detector, request: EvaluationRequest) -> EvaluationResult:
    attacks = parse_attacks(request.attack)
    test_sets = zoo_test_splits(request.protocol) if request.protocol else {_data_name(request.data): request.data}
    table = robustness_table(
        detector, test_sets, attacks, request.attack_seed, request.batch_size, request.class_names, request.allow_outside_root
    )
    written = []
    if request.out_dir:
        path = os.path.join(request.out_dir, "robustness.json")
        write_robustness(table, path)
        written.append(path)
    return EvaluationResult(robustness=table, written=written)


def _data_name(path: str) -> str:
    """A table row's name for one data set: its CSV's stem or its folder's name (`zoo/cross-seed.csv` -> cross-seed)."""
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _report(detector, model_dir: str, request: EvaluationRequest) -> EvaluationResult:
    metrics, report = evaluate_with_report(
        detector,
        request.data,
        request.report_dir,
        batch_size=request.batch_size,
        class_names=request.class_names,
        allow_outside_root=request.allow_outside_root,
        run_dir=request.run_dir or os.path.dirname(os.path.abspath(model_dir)),
        tsne_samples=request.tsne_samples,
        model_dir=model_dir,
    )
    return EvaluationResult(metrics=metrics, written=[*_write_metrics(metrics, request.out_dir), report["markdown"], report["html"]])


def _write_metrics(metrics: dict, out_dir: Optional[str], name: str = "evaluation") -> list:
    if not out_dir:
        return []
    written = write_evaluation(metrics, out_dir, name)
    return [written["json"], written["confusion_png"]]
