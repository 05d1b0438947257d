"""The generalization benchmarks on the tiny zoo: sweep.py (two points sharing stage 1, resumed, JSON and Pareto PNG
written) and the test sets of add_head.py."""

import csv
import importlib.util
import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
FAST = ["train.epochs=2", "train.steps_per_epoch=2", "stage1.epochs=1", "stage1.crops=32", "train.gradcam_images=0", "train.tensorboard=false"]


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("sweep")


def test_sweep_runs_two_points_sharing_stage1_and_resumes(sweep, tiny_zoo, tmp_path, capsys):
    out, work = str(tmp_path / "sweep"), str(tmp_path / "work")
    argv = ["--zoo", tiny_zoo["root"], "--config", "tiny", "--points", "bf16,bf16-frozen", "--work", work, "--out", out, "--verbose", "0"]
    for setting in FAST:
        argv += ["--set", setting]
    report = sweep.main(argv)
    assert os.path.getsize(f"{out}.png") > 0
    on_disk = json.load(open(f"{out}.json"))
    assert on_disk["points"] == json.loads(json.dumps(report["points"])) and sorted(on_disk["points"]) == ["bf16", "bf16-frozen"]
    points = on_disk["points"]
    assert len(os.listdir(os.path.join(work, "stage1"))) == 1  # same stage-1 settings: one run
    assert points["bf16"]["stage1"] == points["bf16-frozen"]["stage1"]
    for point in points.values():
        assert sorted(point["splits"]) == sorted(["closed-set", "cross-seed", "cross-loss", "cross-finetune", "cross-dataset"])
        (run,) = point["runs"]
        # the epoch is chosen on one half of the validation models, the point scored on the other
        assert (run["validation"]["chosen_on"], run["validation"]["scored_on"]) == ("validation_A.csv", "validation_B.csv")
        assert 0 < run["validation"]["count"] < tiny_zoo["splits"]["validation"]["images"]
        assert run["selection"]["select_on"] == "val_models" and 1 <= run["selection"]["epoch"] <= 2
        assert sorted(point["robustness"]) == sorted(sweep.ATTACKS) and all(0 <= v <= 1 for v in point["robustness"].values())
        assert point["train_minutes"] == pytest.approx(point["stage1"]["minutes"] + point["stage2_minutes"]) and point["stage2_minutes"] > 0
    assert points["bf16-frozen"]["runs"][0]["selection"]["finetune_from_block"] == "frozen"
    halves = [{row["path"] for row in csv.DictReader(open(os.path.join(work, f"validation_{h}.csv")))} for h in "AB"]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == tiny_zoo["splits"]["validation"]["images"]
    assert run["validation"]["count"] == len(halves[1])
    best = max(points, key=lambda name: (points[name]["validation"]["accuracy"], -points[name]["train_minutes"]))
    assert on_disk["best_on_validation"] == best and on_disk["pareto_front"]
    capsys.readouterr()

    # Finished points are kept; a new point takes a finished stage-1 run from elsewhere (--stage1-from), so the
    # fresh --work gets no stage-1 run of its own.
    stage1_run = points["bf16"]["stage1"]["run"]
    resumed = [*argv, "--points", "bf16,bf16-frozen,bf16-top4", "--work", str(tmp_path / "other"), "--stage1-from", stage1_run]
    again = sweep.main(resumed)
    assert capsys.readouterr().out.count("finished earlier, kept") == 2
    assert {k: again["points"][k] for k in points} == points
    assert again["points"]["bf16-top4"]["stage1"] == points["bf16"]["stage1"]
    assert sorted(os.listdir(tmp_path / "other")) == ["stage2", "validation_A.csv", "validation_B.csv"]
    # --repeats 2 keeps the finished run and adds one with the next seed; the point's figures are their mean.
    repeated = sweep.main([*argv, "--points", "bf16", "--repeats", "2"])["points"]["bf16"]
    first, second = repeated["runs"]
    assert first == points["bf16"]["runs"][0] and second["run"] != first["run"]
    assert second["validation"]["chosen_on"] == "validation_B.csv"
    for split, scores in repeated["splits"].items():
        assert scores["accuracy"] == pytest.approx((first["splits"][split]["accuracy"] + second["splits"][split]["accuracy"]) / 2)
    with pytest.raises(SystemExit, match="Unknown point"):
        sweep.main([*argv[:4], "--points", "nope"])


def test_add_head_benchmark_tests_other_seeds_and_other_content(tiny_zoo, tmp_path):
    add_head = load_benchmark("add_head")
    models = {m["id"]: m for m in tiny_zoo["models"]}
    folders = add_head.test_folders(tiny_zoo, "progan")
    assert list(folders) == [row for row, *_ in add_head.TESTS]
    by_model = {row: models[os.path.basename(folder)] for row, folder in folders.items()}
    assert [(m["split"], m["seed"], m["content"]) for m in by_model.values()] == [
        ("train", 0, "A"), ("cross-seed", 1, "A"), ("cross-finetune", 0, "B"), ("validation", 2, "B")
    ]
    assert all(os.listdir(folder) for folder in folders.values())
    with open(add_head.base_manifest(tiny_zoo, "progan", str(tmp_path / "base.csv"))) as f:
        labels = {line.rsplit(",", 1)[1].strip() for line in f.readlines()[1:]}
    assert labels == {"real", "mmdgan", "infomaxgan"}


def test_fake_vs_real_manifests_leave_the_zoo_untouched_and_metrics_per_unseen_architecture(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)  # the script imports its neighbours, as when run from its folder
    fake_vs_real = load_benchmark("fake_vs_real")
    before = sorted(os.listdir(tiny_zoo["root"]))
    manifests = fake_vs_real.seen_manifests(tiny_zoo, ["infomaxgan"], str(tmp_path / "manifests"))
    assert sorted(os.listdir(tiny_zoo["root"])) == before  # a read-only zoo works: manifests live in --work
    multiclass, binary = (manifests[kind] for kind in ("multiclass", "binary"))
    for (train, validation), binary_labels in ((multiclass, False), (binary, True)):
        for manifest, split in ((train, "train"), (validation, "validation")):
            with open(manifest) as f:
                rows = [line.strip().rsplit(",", 1) for line in f.readlines()[1:]]
            seen = set(tiny_zoo["splits"][split]["classes"]) - {"infomaxgan"}  # tiny's validation split: progan, real
            assert {label for _, label in rows} == ({"real", "fake"} if binary_labels else seen)
            assert all(os.path.isabs(path) and os.path.isfile(path) for path, _ in rows)
            kept = [row for row in fake_vs_real.read_rows(tiny_zoo, split) if row[1] != "infomaxgan"]
            assert len(rows) == len(kept) > 0

    labels = fake_vs_real.np.array(["real", "real", "dcgan", "dcgan", "stylegan2", "stylegan2"])
    scores = fake_vs_real.np.array([0.1, 0.6, 0.9, 0.4, 0.7, 0.8])
    metrics = fake_vs_real.detection_metrics(scores, labels, ["dcgan", "stylegan2"])
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["reals_passed"] == 0.5
    assert metrics["unseen_fakes_caught"] == 0.75 and metrics["auc"] == pytest.approx(7 / 8)
    assert metrics["dcgan"] == {"caught": 0.5, "auc": 0.75} and metrics["stylegan2"] == {"caught": 1.0, "auc": 1.0}


def test_view_augment_scores_single_runs_their_ensemble_and_each_test_seed():
    import numpy as np

    view_augment = load_benchmark("view_augment")
    labels = np.array([0, 0, 1, 1])
    test_paths = np.array(["test/a/seed2/0.png", "test/a/seed3/0.png", "test/b/seed2/0.png", "test/b/seed4/0.png"])
    right, wrong = np.array([0.9, 0.1]), np.array([0.4, 0.6])
    # run 1 misses image 1, run 2 misses images 1 and 2 (but by less than run 1 is sure of image 2)
    first = np.stack([right, wrong, right[::-1], right[::-1]])
    second = np.stack([right, wrong, np.array([0.6, 0.4]), right[::-1]])
    runs = [{split: (probabilities, labels, test_paths) for split in view_augment.SCORED} for probabilities in (first, second)]
    row = view_augment.arm_row(runs)
    assert row["test"]["runs"] == [75.0, 50.0] and row["test"]["single_mean"] == 62.5
    assert row["test"]["ensemble"] == 75.0  # mean of [0.1, 0.9] and [0.6, 0.4] is still class 1
    assert row["test seed 2"]["runs"] == [100.0, 50.0] and row["test seed 3"]["ensemble"] == 0.0
    assert row["test seed 4"]["ensemble"] == 100.0
    assert set(row) == {"valB", "closed", "test", "test seed 2", "test seed 3", "test seed 4"}
    assert "| none | 2 | 62.5 / 75.0 |" in view_augment.table({"none": row})


def test_stage1_epochs_reads_groups_of_stage1_models_and_refuses_bad_ones(tmp_path, monkeypatch):
    from tfdnadet.model_metadata import METADATA_FILE

    monkeypatch.syspath_prepend(BENCHMARKS)  # it imports view_augment's data and scoring
    stage1_epochs = load_benchmark("stage1_epochs")
    model = tmp_path / "model"
    model.mkdir()
    (model / METADATA_FILE).write_text("{}")
    assert stage1_epochs.parse_group(f"8ep={model},{model}") == ("8ep", [str(model), str(model)])
    with pytest.raises(SystemExit, match="expected NAME=MODEL"):
        stage1_epochs.parse_group("8ep=")
    with pytest.raises(SystemExit, match="8ep: not a model directory: .*missing"):
        stage1_epochs.parse_group(f"8ep={model},{tmp_path / 'missing'}")
    assert stage1_epochs.GROUP_SCORED[0] == "valC" and set(stage1_epochs.VALIDATION["valC"][0]).isdisjoint(stage1_epochs.SPLITS["test"][0])


def test_open_set_views_widen_the_gaussian_towards_what_the_views_look_like(monkeypatch):
    """The 'transpose' features sit where a new seed does: fitted with them, the new seed looks known and the
    unknown architecture (off in another direction) does not."""
    import numpy as np

    monkeypatch.syspath_prepend(BENCHMARKS)  # it imports cross_test's results writer
    open_set_views = load_benchmark("open_set_views")
    rng = np.random.default_rng(0)

    def around(centre, count=40):
        return np.asarray(centre, np.float32) + 0.1 * rng.standard_normal((count, 3)).astype(np.float32)

    train = np.concatenate([around([0, 0, 0]), around([10, 0, 0])])
    features = {"train": train, "train_labels": np.repeat([0, 1], 40), "transpose": train + [0, 0, 3], "unknown": around([0, 3, 0])}
    features.update(channels=train, symmetry=train, validation=around([0, 0, 3]), **{"validation unknown": around([0, 3, 0])})
    features.update((split, around([0, 0, 3])) for split in open_set_views.TEST_SPLITS)
    rows = open_set_views.view_rows(features, ["real", "progan"])
    assert list(rows) == list(open_set_views.VARIANTS)
    default, transposed = rows["training images (the default)"], rows["+ transpose"]
    assert transposed["cross-seed"] == transposed["validation"] == transposed["all known"] == 1.0
    assert default["cross-seed"] < 0.9 and rows["+ channels"]["cross-seed"] < 0.9
    assert "| + transpose | 1.000 | 1.000 |" in open_set_views.table(rows)


def test_cross_test_trains_stage1_once_through_the_sweep_s_resumable_runner(tmp_path, monkeypatch):
    import argparse

    from tfdnadet.model_metadata import FORMAT, METADATA_FILE

    monkeypatch.syspath_prepend(BENCHMARKS)  # it imports sweep's runner
    cross_test = load_benchmark("cross_test")
    calls = []

    def fake_stage1(data, run, config, **options):
        calls.append((run, config.model.backbone, options))
        os.makedirs(os.path.join(run, "model"))
        with open(os.path.join(run, "model", METADATA_FILE), "w") as f:
            json.dump({"format": FORMAT, "config": {"train_minutes": 1.5}}, f)

    monkeypatch.setattr(cross_test, "train_stage1", fake_stage1)
    runs, args = {}, argparse.Namespace(config="tiny", stage1_epochs=None)
    model = cross_test.stage1_model(runs, "dnadet", str(tmp_path), args, 32)
    assert model == os.path.abspath(tmp_path / "stage1" / "model") and runs["dnadet"]["train_seconds"] == 90.0
    assert cross_test.stage1_model(runs, "dnadet", str(tmp_path), args, 32) == model and len(calls) == 1
    assert calls[0][1] == "dnadet" and calls[0][2] == {"resume": True, "verbose": 2}
