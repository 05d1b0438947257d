"""The embedded default job: build the tiny GAN zoo, pretrain, train, run the cross-test protocol, add a head, export.

Every step keeps its output in OUT and is skipped or resumed when run again, so a second run is quick.
"""

import os
from dataclasses import dataclass, field

from tfdnadet.config import load_config
from tfdnadet.evaluation.protocol import evaluate_protocol, write_protocol
from tfdnadet.export import export_model
from tfdnadet.models.model_dir import load_detector
from tfdnadet.training.add_head import add_head
from tfdnadet.training.stage1 import train_stage1
from tfdnadet.training.stage2 import train_stage2
from tfdnadet.zoo.build import build_zoo

ZOO_PRESET = "tiny"
# A short version of the cpu config for the tiny zoo's 32 px images: x2 upsampling to 64 px, 16 px patches
# (a 1/4 crop ratio, App. E), and short runs of both stages.
_STAGE1_SETTINGS = {"stage1.epochs": 4, "train.steps_per_epoch": 25, "stage1.crops": 1024}
_STAGE2_SETTINGS = {"train.epochs": 8, "train.steps_per_epoch": 30}
_SIZES = {"data.base_size": 32, "data.input_size": 64, "data.patch_size": 16}
ADDED_HEAD = "progan"  # a one-vs-all head trained on the frozen backbone, beside the multiclass head
EXPORT_NAME = "tfdnadet"


@dataclass
class QuickstartResult:
    model_dir: str
    protocol: dict  # {split: metrics}
    files: dict = field(default_factory=dict)  # what a user looks at: name -> path


def run_quickstart(out_dir: str, verbose: int = 1, on_progress=None) -> QuickstartResult:
    """Runs every step into `out_dir`; `on_progress(model_id, step, total)` hears about the zoo's GAN training."""
    zoo = build_zoo(os.path.join(out_dir, "zoo"), ZOO_PRESET, on_progress=on_progress)
    zoo_json = os.path.join(zoo["root"], "zoo.json")
    stage1 = _trained(
        os.path.join(out_dir, "stage1"),
        lambda run_dir: train_stage1(None, run_dir, load_config("cpu", {**_SIZES, **_STAGE1_SETTINGS}), resume=True, verbose=verbose),
    )
    config = load_config("cpu", {**_SIZES, **_STAGE2_SETTINGS})
    train_csv = os.path.join(zoo["root"], "train.csv")
    model_dir = _trained(
        os.path.join(out_dir, "stage2"),
        lambda run_dir: train_stage2(train_csv, run_dir, config, init_model=stage1, resume=True, verbose=verbose),
    )
    results = evaluate_protocol(load_detector(model_dir), zoo_json)
    files = {
        "zoo preview": os.path.join(zoo["root"], zoo["preview"]),
        "training curves": os.path.join(out_dir, "stage2", "curves.png"),
        **write_protocol(results, os.path.join(out_dir, "evaluation"), model_dir, zoo_json),
    }
    if not os.path.isdir(os.path.join(model_dir, "heads", ADDED_HEAD)):
        add_head(model_dir, ADDED_HEAD, os.path.join(zoo["root"], "train", ADDED_HEAD), verbose=verbose)
    files[f"one-vs-all head '{ADDED_HEAD}'"] = os.path.join(model_dir, "heads", ADDED_HEAD)
    export_dir = os.path.join(out_dir, "savedmodels", EXPORT_NAME, "1")
    if not os.path.isdir(export_dir):
        export_model(model_dir, EXPORT_NAME, os.path.join(out_dir, "savedmodels"), version=1)
    files["SavedModel for TF Serving"] = export_dir
    files["model"] = model_dir
    return QuickstartResult(model_dir, results, files)


def _trained(run_dir, train):
    """The model directory of a finished run, training (or resuming) it first when it is not there."""
    model_dir = os.path.join(run_dir, "model")
    if not os.path.isfile(os.path.join(model_dir, "detector.json")):
        train(run_dir)
    return model_dir
