"""Ensembles: several stage-1 encoders and stage-2 runs averaged into one model (tfdnadet.models.ensemble)."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from tfdnadet.config import load_config
from tfdnadet.errors import TfdnadetError
from tfdnadet.explain.gradcam import GradCAM
from tfdnadet.export import export_model
from tfdnadet.models.detector import MULTICLASS, POOL_LAYER
from tfdnadet.models.encoder import Encoder
from tfdnadet.models.ensemble import EnsembleEncoder
from tfdnadet.models.model_dir import load_detector
from tfdnadet.training.add_head import add_head
from tfdnadet.training.stage1 import train_stage1
from tfdnadet.training.ensemble import write_ensemble
from tfdnadet.training.stage2 import train_stage2
from tfdnadet.training.trainer import TrainResult

SETTINGS = {"train.precision": "float32", "train.gradcam_images": 0, "stage1.epochs": 1, "stage1.crops": 32}


@pytest.fixture(scope="module")
def ensemble_run(gan_images, tmp_path_factory):
    """Two stage-1 encoders, each fine-tuned twice from block 3 (blocks 1-2 shared): a model of four runs."""
    work = tmp_path_factory.mktemp("ensemble")
    config = load_config("tiny", {**SETTINGS, "stage1.encoders": 2, "train.runs_per_encoder": 2, "train.finetune_from_block": 3})
    stage1 = train_stage1(None, str(work / "stage1"), config, verbose=0)
    started = []
    stage2 = train_stage2(
        gan_images["train"], str(work / "stage2"), config, init_model=stage1.model_dir, verbose=0, on_member=lambda i, n: started.append((i, n))
    )
    return {"stage1": stage1, "stage2": stage2, "config": config, "started": started}


def test_runs_are_written_as_members_and_averaged_into_one_model(ensemble_run):
    stage1, stage2 = ensemble_run["stage1"], ensemble_run["stage2"]
    assert type(load_detector(stage1.model_dir).backbone) is EnsembleEncoder
    assert ensemble_run["started"] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    detector = load_detector(stage2.model_dir)
    backbone = detector.backbone
    assert (backbone.stems, backbone.shared_blocks) == ([0, 1, 0, 1], 2)  # one run of each encoder, then the second runs
    assert backbone.feature_dim == 4 * backbone.member_dim
    seeds = [load_detector(os.path.join(stage2.run_dir, "members", f"run{k}", "model")).config["train"]["seed"] for k in range(4)]
    assert seeds == [0, 2, 1, 3]  # each encoder's runs keep the seeds they had when they trained one after another
    with open(os.path.join(stage2.run_dir, "run.json")) as f:
        record = json.load(f)
    assert record["members"] == [os.path.join("members", f"run{k}") for k in range(4)]
    assert stage2.selection["members"] == 4 and len(stage2.selection["epochs"]) == 4
    assert 0 <= stage2.selection["heldout_images_accuracy"] <= 1
    assert detector.config["ensemble"]["stems"] == [0, 1, 0, 1]
    with open(os.path.join(stage2.run_dir, "stems.json")) as f:
        assert json.load(f) == {"stems": [0, 1, 0, 1]}
    assert load_detector(stage1.model_dir).config["train_minutes"] > 0 and record["train_minutes"] > 0


def test_the_ensemble_answers_with_the_mean_of_its_members_logits(ensemble_run):
    stage2 = ensemble_run["stage2"]
    ensemble = load_detector(stage2.model_dir)
    members = [load_detector(os.path.join(stage2.run_dir, "members", f"run{k}", "model")) for k in range(4)]
    images = tf.random.uniform([3, 64, 64, 3], -1, 1, seed=1)
    logits = ensemble.logits(ensemble.features(images, {POOL_LAYER}))[MULTICLASS]
    member_logits = [m.logits(m.features(images, {POOL_LAYER}))[MULTICLASS] for m in members]
    np.testing.assert_allclose(logits, np.mean(member_logits, axis=0), atol=1e-4)
    # each member comes back out of the ensemble as the encoder it was
    for k, member in enumerate(members):
        np.testing.assert_allclose(ensemble.backbone.member_encoder(k)(images), member.backbone(images), atol=1e-5)


def test_the_shared_blocks_are_the_stage1_encoders(ensemble_run):
    stage1 = load_detector(ensemble_run["stage1"].model_dir).backbone
    ensemble = load_detector(ensemble_run["stage2"].model_dir).backbone
    for member, stem in enumerate(ensemble.stems):
        for index in (1, 2):
            kept = ensemble.get_layer(f"{ensemble.block_name(member, index)}_conv").get_weights()
            pretrained = stage1.get_layer(f"{stage1.block_name(stem, index)}_conv").get_weights()
            assert all(np.array_equal(a, b) for a, b in zip(kept, pretrained))


def test_an_ensemble_exports_and_explains_like_one_model(ensemble_run, tmp_path):
    detector = load_detector(ensemble_run["stage2"].model_dir)
    images = np.random.default_rng(0).uniform(-1, 1, [2, 64, 64, 3]).astype(np.float32)
    exported = tf.saved_model.load(export_model(ensemble_run["stage2"].model_dir, "detector", str(tmp_path)).path)
    served = exported.signatures["predict_images"](images=tf.constant(images))["multiclass_probabilities"]
    np.testing.assert_allclose(served, detector.predict(images)[MULTICLASS], atol=1e-5)
    maps = GradCAM(detector)(images).heatmaps
    assert maps.shape == (2, 64, 64) and np.all((maps >= 0) & (maps <= 1)) and maps.max() > 0


def test_a_head_added_to_an_ensemble_reads_every_run(ensemble_run, gan_images, tmp_path):
    model = str(shutil.copytree(ensemble_run["stage2"].model_dir, tmp_path / "model"))
    positives = os.path.join(gan_images["root"], "progan")
    add_head(model, "progan", positives, epochs=1, steps_per_epoch=2)
    detector = load_detector(model)
    assert detector.heads["progan"].inputs[0].shape[-1] == detector.backbone.feature_dim == 4 * detector.backbone.member_dim
    with pytest.raises(TfdnadetError, match="cannot read 'block6' of this model's EnsembleEncoder backbone"):
        add_head(model, "mmdgan", os.path.join(gan_images["root"], "mmdgan"), finetune_top=2, epochs=1, steps_per_epoch=2)


def test_a_finished_ensemble_resumes_to_the_same_model_and_is_not_overwritten(ensemble_run, gan_images):
    stage2, config = ensemble_run["stage2"], ensemble_run["config"]
    init = load_detector(stage2.model_dir).config["init_model"]
    with open(os.path.join(stage2.model_dir, "detector.json")) as f:
        before = json.load(f)["backbone_sha256"]
    with pytest.raises(TfdnadetError, match="already holds a training run"):
        train_stage2(gan_images["train"], stage2.run_dir, config, init_model=init, verbose=0)
    resumed = train_stage2(gan_images["train"], stage2.run_dir, config, init_model=init, resume=True, verbose=0)
    with open(os.path.join(resumed.model_dir, "detector.json")) as f:
        assert json.load(f)["backbone_sha256"] == before
    assert resumed.selection["epochs"] == stage2.selection["epochs"]


def test_an_ensemble_records_the_precision_its_runs_trained_in_not_auto(ensemble_run, tmp_path):
    stage2 = ensemble_run["stage2"]
    results = []
    for k in range(4):
        run_dir = os.path.join(stage2.run_dir, "members", f"run{k}")
        with open(os.path.join(run_dir, "run.json")) as f:
            results.append(TrainResult(run_dir, os.path.join(run_dir, "model"), 1, 1, {}, json.load(f)["selection"]))
    config = load_config("tiny", {**SETTINGS, "train.precision": "auto"})
    result = write_ensemble(str(tmp_path), results, [0, 1, 0, 1], 2, config, {"stage": 2}, {})
    assert load_config(str(tmp_path / "config.yaml")).train.precision == "float32"  # the runs', not this machine's choice
    assert load_detector(result.model_dir).config["train"]["precision"] == "float32"


def test_a_method_that_trains_one_model_refuses_an_ensemble_init_before_writing(ensemble_run, gan_images, tmp_path):
    config = load_config("tiny", {**SETTINGS, "train.loss": "gfd"})
    with pytest.raises(TfdnadetError, match="holds 2 stage-1 encoders and this method trains one model"):
        train_stage2(gan_images["train"], str(tmp_path / "gfd"), config, init_model=ensemble_run["stage1"].model_dir, verbose=0)
    assert not os.path.exists(tmp_path / "gfd" / "members")


def test_members_must_agree_on_what_they_share():
    first, second = Encoder(0.125, name="a"), Encoder(0.125, name="b")  # two random encoders: block 1 differs
    with pytest.raises(TfdnadetError, match="differs from its stage-1 encoder's other members in block 1"):
        EnsembleEncoder.from_members([first, second], [0, 0], shared_blocks=1)
    assert EnsembleEncoder.from_members([first, second], [0, 1]).feature_dim == 2 * first.feature_dim
    with pytest.raises(TfdnadetError, match="Only DNA-Det encoders can be ensembled"):
        EnsembleEncoder.from_members([first, tf.keras.Sequential()], [0, 1])
    with pytest.raises(TfdnadetError, match="needs >= 2 members"):
        EnsembleEncoder([0], 0, 0.125)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"stage1.encoders": 0}, "stage1.encoders must be an integer >= 1"),
        ({"train.runs_per_encoder": 1.5}, r"'train\.runs_per_encoder' must be int\. Received: 1\.5"),
        ({"train.runs_per_encoder": 2, "model.backbone": "attnet"}, "model.backbone must be dnadet"),
        ({"train.runs_per_encoder": 2, "train.loss": "gfd"}, "leave it 1 for train.loss gfd"),
    ],
)
def test_bad_ensemble_settings_are_errors(settings, message):
    with pytest.raises(TfdnadetError, match=message):
        load_config("tiny", settings)


def test_cli_says_which_run_of_the_ensemble_trains(gan_images, tmp_path, monkeypatch, capsys):
    args = ["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "run", "--config", "tiny", "--epochs", "1"]
    settings = ["--set", "train.runs_per_encoder=2", "--set", "train.gradcam_images=0", "--set", "train.precision=float32"]
    code, out, err = run_cli([*args, *settings], monkeypatch, capsys)
    assert code == 0, err
    assert "run 1/2 of an ensemble" in err and "run 2/2 of an ensemble" in err
    assert "the mean of 2 runs, kept epochs 1, 1" in err
    assert json.loads(out)["selection"]["members"] == 2


def test_a_budget_starts_another_member_only_while_the_runs_so_far_leave_room_for_it(tmp_path, monkeypatch):
    """Each fake run takes 10 minutes of a fake clock; finished runs are kept on resume, and their minutes count."""
    from tfdnadet.model_metadata import METADATA_FILE
    from tfdnadet.training import ensemble

    now = [0.0]
    monkeypatch.setattr(ensemble.time, "perf_counter", lambda: now[0])

    def train_member(member_dir, member_config, stem):
        if not os.path.isfile(os.path.join(member_dir, "model", METADATA_FILE)):
            now[0] += 600.0
            os.makedirs(os.path.join(member_dir, "model"))
            open(os.path.join(member_dir, "model", METADATA_FILE), "w").close()
        return stem

    config = load_config("tiny")
    stems = [0, 1, 2, 3]
    assert ensemble.train_members(str(tmp_path / "all"), config, stems, train_member) == stems
    started = []
    run = str(tmp_path / "budget")
    assert ensemble.train_members(run, config, stems, train_member, lambda i, n: started.append(i), budget_minutes=25) == [0, 1]
    assert started == [0, 1]  # after two runs of 10 minutes a third would end at 30
    assert ensemble.train_members(run, config, stems, train_member, budget_minutes=5) == [0, 1]  # finished runs stay
    assert ensemble.train_members(run, config, stems, train_member, budget_minutes=45) == [0, 1, 2, 3]
    with open(os.path.join(run, "members", "run3", ensemble.SECONDS_RECORD)) as f:
        assert json.load(f)["seconds"] == 600.0


def test_train_stage1_keeps_the_encoders_its_budget_allows_and_says_so(gan_images, tmp_path, monkeypatch, capsys):
    args = ["train-stage1", "--out", tmp_path / "pt", "--config", "tiny", "--epochs", "1", "--crops", "32"]
    settings = ["stage1.encoders=3", "stage1.budget_minutes=0.0001", "train.gradcam_images=0", "train.precision=float32"]
    code, _, err = run_cli([*args, *[item for s in settings for item in ("--set", s)]], monkeypatch, capsys)
    assert code == 0, err
    assert "budget: 1 of 3 encoders fit stage1.budget_minutes 0.0001 on this machine" in err
    assert "run 2/3" not in err and sorted(os.listdir(tmp_path / "pt" / "members")) == ["run0"]
    assert "(kept epoch 1, chosen on last)" in err
    model = load_detector(str(tmp_path / "pt" / "model"))
    assert isinstance(model.backbone, Encoder) and model.class_names == load_detector(str(tmp_path / "pt" / "members" / "run0" / "model")).class_names
    code, _, err = run_cli(["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "run", "--config", "tiny", "--epochs", "1",
                            "--init", tmp_path / "pt" / "model", "--set", "train.gradcam_images=0"], monkeypatch, capsys)
    assert code == 0, err


def test_a_stage2_budget_gives_every_encoder_a_run_and_second_runs_only_while_they_fit(ensemble_run, gan_images, tmp_path, monkeypatch, capsys):
    """Stage 1's recorded minutes already exceed the budget: one run of each encoder, no second runs, and --resume
    without the budget trains them."""
    args = ["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "run", "--config", "tiny", "--epochs", "1",
            "--init", ensemble_run["stage1"].model_dir]
    settings = ["train.runs_per_encoder=2", "train.gradcam_images=0", "train.precision=float32", "train.finetune_from_block=3"]
    code, _, err = run_cli([*args, *[item for s in [*settings, "train.budget_minutes=0.0001"] for item in ("--set", s)]], monkeypatch, capsys)
    assert code == 0, err
    assert "budget: 2 of 4 runs fit train.budget_minutes 0.0001 (stage 1 took " in err
    assert "run 3/4" not in err and sorted(os.listdir(tmp_path / "run" / "members")) == ["init0", "init1", "run0", "run1"]
    assert load_detector(str(tmp_path / "run" / "model")).backbone.stems == [0, 1]
    code, _, err = run_cli([*args, "--resume", *[item for s in [*settings, "train.budget_minutes=null"] for item in ("--set", s)]], monkeypatch, capsys)
    assert code == 0, err
    assert "budget:" not in err and "run 3/4" in err and "run 4/4" in err
    assert load_detector(str(tmp_path / "run" / "model")).backbone.stems == [0, 1, 0, 1]


def test_a_stage2_ensemble_begun_without_a_record_keeps_its_runs_order(tmp_path):
    from tfdnadet.training.stage2 import STEMS_RECORD, _recorded_stems

    assert _recorded_stems(str(tmp_path / "new"), [0, 1, 0, 1]) == [0, 1, 0, 1]
    assert _recorded_stems(str(tmp_path / "new"), [0, 1, 2, 0, 1, 2]) == [0, 1, 0, 1]  # --resume: as it began
    os.makedirs(tmp_path / "old" / "members" / "run0")  # an earlier release: each encoder's runs one after another
    assert _recorded_stems(str(tmp_path / "old"), [0, 1, 0, 1]) == [0, 0, 1, 1]
    assert not os.path.exists(tmp_path / "old" / STEMS_RECORD)


def test_plan_encoders_trades_epochs_for_encoders_only_where_more_of_them_fit():
    from tfdnadet.training.stage1 import plan_encoders

    cpu = load_config("cpu", {"stage1.min_epochs": 8})  # 8 encoders of 24 epochs, min 8, 47 minutes, 2 stage-2 runs each
    assert plan_encoders(14.0, cpu) == (8, 24)  # all fit: 8 x 24 x 14 s = 45 min
    # 75 s an epoch: one of 24 fits (30 min, its stage-2 runs 8.5 more); three of 8 take 30 + 25.5 minutes
    assert plan_encoders(75.0, cpu) == (3, 8)
    assert plan_encoders(30.0, cpu) == (7, 8)  # three of 24 fit; seven of 8 in the same 57 minutes
    assert plan_encoders(300.0, cpu) == (1, 24)  # not even two short ones fit: one full encoder
    for min_epochs in (None, 24):
        config = dataclasses.replace(cpu, stage1=dataclasses.replace(cpu.stage1, min_epochs=min_epochs))
        assert plan_encoders(75.0, config) == (1, 24)


def test_train_stage1_trains_more_shorter_encoders_where_the_budget_fits_them(gan_images, tmp_path, monkeypatch, capsys):
    """A fake 60 s epoch: one encoder of 8 epochs fits 9 minutes, two of 1 epoch (their stage-2 runs counted) do."""
    from tfdnadet.training import stage1

    monkeypatch.setattr(stage1, "member_seconds", lambda path: 60.0)
    args = ["train-stage1", "--out", tmp_path / "pt", "--config", "tiny", "--epochs", "8", "--crops", "32"]
    settings = ["stage1.encoders=3", "stage1.budget_minutes=9", "stage1.min_epochs=1", "train.gradcam_images=0", "train.precision=float32"]
    command = [*args, *[item for s in settings for item in ("--set", s)]]
    code, _, err = run_cli(command, monkeypatch, capsys)
    assert code == 0, err
    assert "budget: 2 encoders of 1 epoch fit stage1.budget_minutes 9 on this machine" in err
    assert "(3 of 8 epochs: 0.4 hours; --set stage1.min_epochs=null keeps 8)" in err
    assert err.count("run 1/3") == 1 and "run 2/2" in err and "run 3/" not in err
    assert sorted(os.listdir(tmp_path / "pt" / "members")) == ["run0", "run1"]
    with open(tmp_path / "pt" / stage1.PLAN_RECORD) as f:
        assert json.load(f) == {"encoders": 2, "epochs": 1, "epoch_seconds": 60.0}
    for member in ("run0", "run1"):
        with open(tmp_path / "pt" / "members" / member / "history.csv") as f:
            assert len(f.readlines()) == 2  # header and one epoch
    assert len(load_detector(str(tmp_path / "pt" / "model")).backbone.stems) == 2
    code, _, err = run_cli([*command, "--resume"], monkeypatch, capsys)  # the recorded plan, nothing retrained
    assert code == 0, err
    assert "budget:" not in err and sorted(os.listdir(tmp_path / "pt" / "members")) == ["run0", "run1"]


def test_train_stage1_keeps_the_epochs_where_every_encoder_fits(gan_images, tmp_path, monkeypatch, capsys):
    from tfdnadet.training import stage1

    monkeypatch.setattr(stage1, "member_seconds", lambda path: 1.0)
    args = ["train-stage1", "--out", tmp_path / "pt", "--config", "tiny", "--epochs", "2", "--crops", "32"]
    settings = ["stage1.encoders=2", "stage1.budget_minutes=9", "stage1.min_epochs=1", "train.gradcam_images=0", "train.precision=float32"]
    code, _, err = run_cli([*args, *[item for s in settings for item in ("--set", s)]], monkeypatch, capsys)
    assert code == 0, err
    assert "budget:" not in err and err.count("run 1/2") == 1 and "run 2/2" in err
    for member in ("run0", "run1"):  # the first encoder went on from its timed epoch to both
        with open(tmp_path / "pt" / "members" / member / "history.csv") as f:
            assert len(f.readlines()) == 3


def test_bad_budgets_are_errors():
    for value in (0, -5):
        with pytest.raises(TfdnadetError, match="stage1.budget_minutes must be a number of minutes > 0, or null"):
            load_config("tiny", {"stage1.budget_minutes": value})
    for value in ("an hour", True):
        with pytest.raises(TfdnadetError, match="'stage1.budget_minutes' must be float or null"):
            load_config("tiny", {"stage1.budget_minutes": value})
    assert load_config("cpu").stage1.budget_minutes == 47
    for value in (0, 2.5, True):
        with pytest.raises(TfdnadetError, match="stage1.min_epochs must be an integer >= 1, or null|'stage1.min_epochs' must be"):
            load_config("tiny", {"stage1.min_epochs": value})
    assert load_config("cpu").stage1.min_epochs is None and load_config("tiny").stage1.min_epochs is None
    with pytest.raises(TfdnadetError, match="train.budget_minutes must be a number of minutes > 0, or null"):
        load_config("tiny", {"train.budget_minutes": 0})
    assert load_config("cpu").train.budget_minutes == 60 and load_config("tiny").train.budget_minutes is None
