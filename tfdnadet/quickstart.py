"""The embedded default job: build the tiny GAN zoo, pretrain, train, run the cross-test protocol, add a head, export.

Every stage keeps its output in OUT and is skipped or resumed when run again, so a second run is quick.
"""

import csv
import os
from dataclasses import dataclass, field
from typing import Optional

from tfdnadet.config import load_config
from tfdnadet.evaluation.protocol import evaluate_protocol, write_protocol
from tfdnadet.export import export_model
from tfdnadet.models.detector import MULTICLASS
from tfdnadet.model_metadata import is_model_dir
from tfdnadet.models.model_dir import load_detector, read_head_info
from tfdnadet.training.add_head import add_head
from tfdnadet.training.stage1 import train_stage1
from tfdnadet.training.stage2 import train_stage2
from tfdnadet.zoo.build import build_zoo

ZOO_PRESET = "tiny"
# A short version of the cpu config for the tiny zoo's 32 px images: x2 upsampling to 64 px, 16 px patches
# (a 1/4 crop ratio, App. E), and one short run of each stage (the cpu config's ensemble of sixteen runs would take
# several times as long).
_STAGE1_SETTINGS = {"stage1.epochs": 4, "train.steps_per_epoch": 25, "stage1.crops": 1024}
_STAGE2_SETTINGS = {"train.epochs": 8, "train.steps_per_epoch": 15}  # 15 steps of k = 16 images per class
_SIZES = {"data.base_size": 32, "data.input_size": 64, "data.patch_size": 16}
_ONE_RUN = {"stage1.encoders": 1, "train.runs_per_encoder": 1}
ADDED_HEAD = "progan"  # a one-vs-all head trained on the frozen backbone, beside the multiclass head
EXPORT_NAME = "tfdnadet"
TEST_SPLIT = "closed-set"
STAGES = (
    "building the tiny GAN zoo",
    "pretraining the encoder on image transformations (stage 1)",
    "training the architecture classifier (stage 2)",
    "cross-test protocol on the zoo's test splits",
    f"adding a one-vs-all head '{ADDED_HEAD}'",
    "exporting a SavedModel for TF Serving",
)


@dataclass
class QuickstartResult:
    model_dir: str
    protocol: dict  # {split: metrics}
    stage1: Optional[dict]  # {"classes", "epochs", "val_accuracy"} from stage 1's history.csv
    test_csv: str  # the closed-set test split, a manifest `evaluate --data` reads
    example_image: str  # one test image of the added head's architecture
    export_dir: str
    report_dir: str  # where the suggested `evaluate --report` writes
    gradcam_dir: str  # where the suggested `gradcam` writes
    files: dict = field(default_factory=dict)  # what a user looks at: label -> path


def run_quickstart(out_dir: str, callbacks: tuple = (), on_stage=None, on_progress=None) -> QuickstartResult:
    """Runs every stage into `out_dir`, silently: `callbacks` (Keras) see both training stages, `on_stage(number,
    total, title, done)` each stage start (`done`: its output is there from an earlier run), `on_progress(model_id,
    step, total)` the zoo's GAN training."""
    announce = on_stage or (lambda *args: None)
    zoo_json = os.path.join(out_dir, "zoo", "zoo.json")
    announce(1, len(STAGES), STAGES[0], os.path.isfile(zoo_json))
    zoo = build_zoo(os.path.dirname(zoo_json), ZOO_PRESET, on_progress=on_progress)
    stage1_run, stage2_run = os.path.join(out_dir, "stage1"), os.path.join(out_dir, "stage2")

    announce(2, len(STAGES), STAGES[1], _finished(stage1_run))
    stage1 = _trained(
        stage1_run,
        lambda run_dir: train_stage1(None, run_dir, load_config("cpu", {**_SIZES, **_ONE_RUN, **_STAGE1_SETTINGS}), resume=True, verbose=0, callbacks=callbacks),
    )
    announce(3, len(STAGES), STAGES[2], _finished(stage2_run))
    config = load_config("cpu", {**_SIZES, **_ONE_RUN, **_STAGE2_SETTINGS})
    train_csv = os.path.join(zoo["root"], "train.csv")
    model_dir = _trained(
        stage2_run, lambda run_dir: train_stage2(train_csv, run_dir, config, init_model=stage1, resume=True, verbose=0, callbacks=callbacks)
    )

    announce(4, len(STAGES), STAGES[3], False)
    results = evaluate_protocol(load_detector(model_dir), zoo_json)
    evaluation_dir = os.path.join(out_dir, "evaluation")
    files = {
        "zoo preview (samples of every GAN)": os.path.join(zoo["root"], zoo["preview"]),
        "stage 2 training curves": os.path.join(stage2_run, "curves.png"),
        "cross-test results": write_protocol(results, evaluation_dir, model_dir, zoo_json)["protocol_json"],
        "confusion matrix per split (SPLIT_confusion.png)": evaluation_dir,
    }
    head_dir = os.path.join(model_dir, "heads", ADDED_HEAD)
    announce(5, len(STAGES), STAGES[4], os.path.isdir(head_dir))
    if not os.path.isdir(head_dir):
        add_head(model_dir, ADDED_HEAD, os.path.join(zoo["root"], "train", ADDED_HEAD))
    export_dir = os.path.join(out_dir, "savedmodels", EXPORT_NAME, "1")
    announce(6, len(STAGES), STAGES[5], os.path.isdir(export_dir))
    if not os.path.isdir(export_dir):
        export_model(model_dir, EXPORT_NAME, os.path.join(out_dir, "savedmodels"), version=1)
    files["model (multiclass head + one-vs-all head)"] = model_dir
    files["SavedModel for TF Serving"] = export_dir
    test_csv = os.path.join(zoo["root"], f"{TEST_SPLIT}.csv")
    return QuickstartResult(
        model_dir=model_dir,
        protocol=results,
        stage1=_last_epoch(stage1_run),
        test_csv=test_csv,
        example_image=_first_image(test_csv, ADDED_HEAD),
        export_dir=export_dir,
        report_dir=os.path.join(out_dir, "report"),
        gradcam_dir=os.path.join(out_dir, "gradcam"),
        files=files,
    )


def _finished(run_dir: str) -> bool:
    return is_model_dir(os.path.join(run_dir, "model"))


def _trained(run_dir, train):
    """The model directory of a finished run, training (or resuming) it first when it is not there."""
    if not _finished(run_dir):
        train(run_dir)
    return os.path.join(run_dir, "model")


def _last_epoch(run_dir: str) -> Optional[dict]:
    """Stage 1's last epoch from its history.csv: how well the encoder tells the transformations apart."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "val_accuracy" not in rows[-1]:
        return None
    classes = read_head_info(os.path.join(run_dir, "model"), MULTICLASS)["class_names"]
    return {"classes": len(classes), "epochs": len(rows), "val_accuracy": float(rows[-1]["val_accuracy"])}


def _first_image(manifest: str, label: str) -> str:
    """The first image of class `label` in a split manifest (path,label,...; paths relative to it)."""
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] == label:
                return os.path.join(os.path.dirname(manifest), row["path"])
    raise ValueError(f"{manifest} has no image of class {label!r}")
