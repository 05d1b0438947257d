"""Open-set attribution: metrics, the mixed-model verdict rule, the stored rejection rule, predict/SavedModel parity."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_cli, write_manifest
from test_models import make_detector
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.open_set import (
    accepting_threshold,
    auroc,
    calibrate_rejection,
    evaluate_open_set,
    known_images,
    oscr,
    out_of_fold_knownness,
    pooled_features,
    rejecting_threshold,
    unknown_model_metrics,
    write_open_set,
)
from tfdnadet.inference import attribute, load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS
from tfdnadet.model_metadata import read_metadata
from tfdnadet.models.model_dir import REJECTION_FILE, load_detector, read_rejection, save_detector, write_rejection
from tfdnadet.models.heads import BinaryHead
from tfdnadet.rejection import fit_gaussian
from tfdnadet.serving.graph import DetectorServing
from tfdnadet.verdict import KNOWNNESS, MULTIPLE, REAL, UNKNOWN, verdicts

def stored_rule(model: str) -> dict:
    return read_rejection(model, read_metadata(model)["backbone_sha256"])


PLANTED = "sngan"  # the planted out-of-distribution class: flat colours and stripes, nothing a GAN of the fixtures makes


def test_metrics_against_hand_computed_cases():
    known, unknown = np.asarray([0.9, 0.8, 0.3]), np.asarray([0.5, 0.1])
    assert auroc(known, unknown) == pytest.approx(5 / 6)  # 0.3 < 0.5 is the one pair out of six in the wrong order
    assert auroc(np.asarray([0.5]), np.asarray([0.5])) == pytest.approx(0.5)
    # (FPR, CCR) points: (0, 1/3) until 0.5 lets one unknown in, (1/2, 2/3) at 0.3, (1, 2/3) at 0.1: area 1/6 + 1/3.
    assert oscr(known, np.asarray([True, False, True]), unknown) == pytest.approx(0.5)
    assert oscr(known, np.ones(3, bool), np.asarray([0.0, 0.05])) == pytest.approx(1.0)  # perfect separation, all right
    unknown20 = np.arange(20.0)
    assert rejecting_threshold(unknown20) == 19.0 and np.mean(unknown20 < 19.0) == 0.95
    assert rejecting_threshold(np.asarray([1.0, 2.0])) > 2.0  # 95 % of two images is both of them
    assert accepting_threshold(np.arange(20.0)) == 0.5  # accepts 1..19: 95 %, and no score on the boundary
    assert accepting_threshold(np.asarray([3.0, 1.0]), share=0.99) == 0.0  # all accepted, a margin below the lowest


def test_each_unknown_model_against_a_hand_computed_case():
    known = np.asarray([0.9, 0.8, 0.3])
    unknown = {
        "knownness": np.asarray([0.5, 0.1, 0.95, 0.85]),
        "predicted": np.asarray([1, 1, 0, 1]),
        "groups": np.asarray(["dcgan-seed0", "dcgan-seed0", "stylegan2-seed0", "stylegan2-seed0"]),
    }
    models = unknown_model_metrics(known, unknown, ["dcgan", "dcgan", "stylegan2", "stylegan2"], ["real", "progan"], 0.6)
    assert list(models) == ["dcgan-seed0", "stylegan2-seed0"]
    dcgan, stylegan2 = models["dcgan-seed0"], models["stylegan2-seed0"]
    assert dcgan["architecture"] == "dcgan" and dcgan["count"] == 2 and dcgan["taken_for"] == {"progan": 1.0}
    assert dcgan["auroc"] == pytest.approx(5 / 6) and dcgan["refused_by_rule"] == 1.0  # 0.3 < 0.5: one pair of six wrong
    # 0.95 beats every known image, 0.85 all but 0.9: 1 of 6 pairs right; one image is named real, one progan.
    assert stylegan2["auroc"] == pytest.approx(1 / 6) and stylegan2["taken_for"] == {"real": 0.5, "progan": 0.5}
    assert stylegan2["refused_by_rule"] == 0.0
    assert "refused_by_rule" not in unknown_model_metrics(known, unknown, ["dcgan"] * 4, ["real", "progan"])["dcgan-seed0"]


def test_score_distributions_drawn_on_a_log_scale_when_the_tail_is_long(tmp_path):
    from tfdnadet.plots import _signed_exp, _signed_log, plot_score_distributions

    values = np.asarray([-1.5e5, -2000.0, -9.0, 0.0, 0.5, 40.0])
    np.testing.assert_allclose(_signed_exp(_signed_log(values)), values, rtol=1e-12)  # the scale is invertible
    assert np.all(np.diff(_signed_log(values)) > 0)  # and keeps the order
    cases = [
        ("gaussian", -np.geomspace(1e3, 1e5, 50), -np.geomspace(5e3, 2e5, 30)),
        ("msp", np.linspace(0.4, 1, 50), np.linspace(0.3, 1, 30)),
        ("narrow", -np.linspace(4000, 2600, 50), -np.linspace(4500, 2500, 30)),  # no power of ten inside: a linear axis
    ]
    for name, known, unknown in cases:
        path = tmp_path / f"{name}.png"
        plot_score_distributions({"closed-set": known}, {"unknown: dcgan": unknown}, {"rejects 95% of unknowns": float(unknown[1])}, name, str(path))
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_gaussian_fit_against_hand_computed_cases():
    # Two classes, each a cross of four points around its mean: the within-class covariance is 0.5 I, already a
    # multiple of I, so no shrinkage changes it and the precision is 2 I.
    cross = np.asarray([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    features, labels = np.concatenate([cross, cross + [10.0, 20.0]]), np.asarray([0] * 4 + [1] * 4)
    rule = fit_gaussian(features, labels, ["real", "progan"])
    np.testing.assert_allclose(rule["means"], [[0.0, 0.0], [10.0, 20.0]])
    np.testing.assert_allclose(rule["precision"], 2 * np.eye(2), atol=1e-9)
    # Stretched along one axis: shrunk towards its mean variance by the Ledoit-Wolf share, as scikit-learn's
    # LedoitWolf estimator (its own code path) computes the covariance of the class-centred features.
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 3)) * [5.0, 1.0, 0.2] + np.repeat([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]], 20, axis=0)
    labels = np.repeat([0, 1], 20)
    rule = fit_gaussian(features, labels, ["real", "progan"])
    means = np.asarray([features[:20].mean(axis=0), features[20:].mean(axis=0)])
    expected = LedoitWolf(assume_centered=True).fit(features - means[labels])
    assert 0 < rule["shrinkage"] < 1 and rule["shrinkage"] == pytest.approx(expected.shrinkage_)
    np.testing.assert_allclose(rule["precision"], expected.precision_, rtol=1e-6)
    with pytest.raises(TfdnadetError, match="no images of progan"):
        fit_gaussian(features[:20], labels[:20], ["real", "progan"])


def test_out_of_fold_scores_against_a_hand_computed_case():
    # One feature; training images of class 0 at -1 and 1, of class 1 at 9 and 11; validation images at 2 (class 0)
    # and 13 (class 1). Holding out class 0's validation image: class 1 is {9, 11, 13} (mean 11), the pooled
    # within-class variance (1 + 1 + 4 + 0 + 4) / 5 = 2, so 2 scores -(2 - 0)^2 / 2 = -2. Holding out class 1's:
    # class 0 is {-1, 1, 2} (mean 2/3), variance (25/9 + 1/9 + 16/9 + 1 + 1) / 5 = 4/3, so 13 scores -(13 - 10)^2 * 3/4.
    # (Fitted on everything, 2 would score -8/7 against the in-sample Gaussian; on training only, -4.)
    scores = out_of_fold_knownness(
        np.asarray([[-1.0], [1.0], [9.0], [11.0]]), np.asarray([0, 0, 1, 1]), np.asarray([[2.0], [13.0]]), np.asarray([0, 1]), ["real", "progan"]
    )
    np.testing.assert_allclose(scores, [-2.0, -6.75], rtol=1e-6)


def mixed_detector():
    """Multiclass real/progan/sngan, a binary head for sngan (a class the multiclass knows) and for stylegan2 (new)."""
    detector = make_detector()
    for name in ("sngan", "stylegan2"):
        detector.add_head(name, BinaryHead(detector.backbone.feature_dim, 4, name=name), {"threshold": 0.5})
    return detector


# multiclass real/progan/sngan; heads sngan, stylegan2; knownness; the verdict with the rule msp >= 0.6
MIXED_CASES = [
    ([0.8, 0.1, 0.1], 0.1, 0.1, 0.8, REAL),  # judged real
    ([0.1, 0.8, 0.1], 0.1, 0.1, 0.8, "progan"),  # no head fires: the multiclass answers for its class
    ([0.1, 0.8, 0.1], 0.1, 0.9, 0.8, "stylegan2"),  # a head of an architecture the multiclass never saw overrules it
    ([0.1, 0.1, 0.8], 0.9, 0.1, 0.8, "sngan"),  # agreement
    ([0.1, 0.8, 0.1], 0.9, 0.1, 0.8, MULTIPLE),  # conflict between two heads that both know progan and sngan
    ([0.1, 0.5, 0.4], 0.1, 0.1, 0.5, UNKNOWN),  # rejected and no head fires
    ([0.1, 0.5, 0.4], 0.1, 0.9, 0.5, "stylegan2"),  # rejected multiclass answer, one head
    ([0.5, 0.3, 0.2], 0.1, 0.1, 0.5, UNKNOWN),  # a rejected `real` is no answer either
    ([0.1, 0.5, 0.4], 0.9, 0.9, 0.5, MULTIPLE),
]


def test_rule_matrices_are_stored_beside_the_json_and_earlier_inline_rules_still_load(tmp_path):
    rng = np.random.default_rng(0)
    rule = {"score": "gaussian", "threshold": -3.5, "backbone_sha256": "abc", "means": rng.normal(size=(3, 4)).tolist(), "precision": np.eye(4)}
    path = str(tmp_path)
    with open(tmp_path / REJECTION_FILE, "w") as f:  # as an earlier release wrote it: the matrices inline
        json.dump({**rule, "precision": rule["precision"].tolist()}, f)
    earlier = read_rejection(path, "abc")
    np.testing.assert_allclose(earlier["means"], rule["means"], rtol=1e-6)
    assert earlier["precision"].dtype == np.float32 and earlier["threshold"] == -3.5
    write_rejection(path, earlier)
    (first,) = [name for name in os.listdir(path) if name.endswith(".npz")]
    record = json.load(open(tmp_path / REJECTION_FILE))
    assert record["arrays"] == first and "means" not in record and "precision" not in record
    again = read_rejection(path, "abc")
    assert all(np.array_equal(again[k], earlier[k]) for k in ("means", "precision")) and "arrays" not in again
    write_rejection(path, {**earlier, "means": earlier["means"] + 1})  # a new fit: one .npz, the new one
    assert [name for name in os.listdir(path) if name.endswith(".npz")] != [first]
    assert len([name for name in os.listdir(path) if name.endswith(".npz")]) == 1
    write_rejection(path, {"score": "msp", "threshold": 0.5, "backbone_sha256": "abc"})  # no matrices, no .npz
    assert sorted(os.listdir(path)) == [REJECTION_FILE] and read_rejection(path, "abc")["score"] == "msp"
    with open(tmp_path / REJECTION_FILE, "w") as f:
        json.dump({**record}, f)  # names an .npz that is gone
    with pytest.raises(TfdnadetError, match=rf"{first} \(named in rejection.json\) is missing or unreadable"):
        read_rejection(path, "abc")


def test_mixed_model_verdicts_in_python_and_in_the_serving_graph():
    detector = mixed_detector()
    detector.rejection = {"score": "msp", "threshold": 0.6}
    multiclass, sngan, stylegan2, knownness, expected = (np.asarray(column) for column in zip(*MIXED_CASES))
    outputs = {MULTICLASS: multiclass, "sngan": sngan[:, None], "stylegan2": stylegan2[:, None], KNOWNNESS: knownness}
    assert [v.label for v in verdicts(detector, outputs)] == list(expected)
    serving = DetectorServing(detector)
    names = np.asarray(detector.class_names)[np.argmax(multiclass, axis=1)]
    graph_outputs = {f"{MULTICLASS}_class_name": tf.constant(names), KNOWNNESS: tf.constant(knownness, tf.float32)}
    for name, score in (("sngan", sngan), ("stylegan2", stylegan2)):
        graph_outputs[f"{name}_decision"] = tf.constant((score >= 0.5).astype("int32"))
        graph_outputs[f"{name}_score"] = tf.constant(score, tf.float32)
    assert [label.decode() for label in serving._verdict(graph_outputs).numpy()] == list(expected)
    # Without a rejection rule the multiclass answer always counts: case 6 is progan, not unknown-generator.
    detector.rejection = None
    assert verdicts(detector, outputs)[5].label == "progan"


def planted_images(folder, count=24):
    """Flat colours with bold stripes: images no generator of the fixtures draws."""
    rng = np.random.default_rng(7)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = np.zeros((32, 32, 3), np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
        image[:, (i % 4) :: 6] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"{i:04d}.png"))
    return folder


@pytest.fixture(scope="module")
def open_zoo(gan_images, tmp_path_factory):
    """A zoo manifest over the fixture images: train = seeds 0-1, validation and closed-set = seed 2, plus PLANTED."""
    root = tmp_path_factory.mktemp("open_zoo")
    for name in ("progan", "mmdgan", "dcgan", "real", "train.csv", "test.csv"):
        source = os.path.join(gan_images["root"], name)
        (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, root / name)
    planted = planted_images(root / PLANTED)
    write_manifest(root / "planted.csv", [(f"{PLANTED}/{n}", PLANTED) for n in sorted(os.listdir(planted))])
    splits = {"train": "train.csv", "validation": "test.csv", "closed-set": "test.csv", "cross-seed": "planted.csv"}
    manifest = {
        "format": "tfdnadet-zoo",
        "class_names": ["real", "dcgan", "mmdgan", "progan", PLANTED],
        "splits": {split: {"manifest": csv} for split, csv in splits.items()},
    }
    (root / "zoo.json").write_text(json.dumps(manifest))
    return {"zoo": str(root / "zoo.json"), "planted": str(planted)}


@pytest.fixture(scope="module")
def calibrated(trained_run, open_zoo, tmp_path_factory):
    """A copy of the tiny trained model (progan, mmdgan, dcgan, real) with the Gaussian fitted on the zoo's train split."""
    model = str(tmp_path_factory.mktemp("open_model") / "model")
    shutil.copytree(trained_run.model_dir, model)
    root = os.path.dirname(open_zoo["zoo"])
    calibrate_rejection(model, "gaussian", os.path.join(root, "test.csv"), os.path.join(root, "train.csv"))
    return model


def test_calibration_is_stored_reloaded_and_predict_rejects_a_planted_class(calibrated, open_zoo, monkeypatch, capsys):
    code, out, err = run_cli(["calibrate-rejection", calibrated, "--protocol", open_zoo["zoo"], "--score", "gaussian"], monkeypatch, capsys)
    assert code == 0, err
    printed = json.loads(out)
    stored = stored_rule(calibrated)
    assert printed["score"] == stored["score"] == "gaussian" and printed["threshold"] == stored["threshold"]
    assert stored["means"].shape[0] == 4 and stored["validation_accepted"] >= 0.95
    assert "means" not in printed and stored["precision"].shape == (stored["means"].shape[1],) * 2
    with open(os.path.join(calibrated, REJECTION_FILE)) as f:
        assert "precision" not in json.load(f)  # the matrices live in the .npz it names
    detector = load_detector(calibrated)
    assert detector.rejection["threshold"] == stored["threshold"]
    save_detector(detector, calibrated + "_copy")  # the rule travels with a saved detector
    copied = load_detector(calibrated + "_copy").rejection
    assert copied.keys() == detector.rejection.keys() and all(np.array_equal(copied[k], detector.rejection[k]) for k in copied)
    results, _ = attribute(detector, [open_zoo["planted"]])
    planted_verdicts = [r.verdict for r in results]
    assert planted_verdicts.count(UNKNOWN) >= 0.75 * len(results), planted_verdicts
    code, out, _ = run_cli(["predict", calibrated, open_zoo["planted"], "--json"], monkeypatch, capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [row["verdict"] for row in rows] == planted_verdicts
    assert all((row["knownness"] >= stored["threshold"]) == (row["verdict"] != UNKNOWN) for row in rows)
    known, _ = attribute(detector, [os.path.join(os.path.dirname(open_zoo["zoo"]), "progan")])
    assert sum(r.verdict == UNKNOWN for r in known) <= 0.25 * len(known)


def test_gaussian_is_fitted_on_validation_images_of_known_classes_unless_train_only(calibrated, open_zoo, monkeypatch, capsys):
    root = os.path.dirname(open_zoo["zoo"])
    detector = load_detector(calibrated)
    data = {}
    for split in ("train", "test"):
        images = known_images(os.path.join(root, f"{split}.csv"), detector.class_names)
        data[split] = (pooled_features(detector, load_for_detector(detector, images.paths, images.labels)), images.labels)

    def class_means(*splits):
        features, labels = (np.concatenate(values) for values in zip(*(data[split] for split in splits)))
        return [features[labels == i].mean(axis=0) for i in range(len(detector.class_names))]

    # Fitted on validation too, the threshold comes from the validation images' out-of-fold scores.
    out_of_fold = out_of_fold_knownness(*data["train"], *data["test"], detector.class_names)
    model = calibrated + "_train_only"
    shutil.copytree(calibrated, model)
    for flag, splits in (("--fit-validation", ("train", "test")), ("--train-only", ("train",))):
        code, out, err = run_cli(["calibrate-rejection", model, "--protocol", open_zoo["zoo"], flag], monkeypatch, capsys)
        assert code == 0, err
        stored = stored_rule(model)
        assert json.loads(out)["fit_validation"] is stored["fit_validation"] is (flag == "--fit-validation")
        np.testing.assert_allclose(stored["means"], class_means(*splits), rtol=1e-4, atol=1e-5)
        if flag == "--fit-validation":
            assert stored["threshold"] == pytest.approx(accepting_threshold(out_of_fold), rel=1e-4)
            assert "out of fold" in err
    assert not np.allclose(class_means("train"), class_means("train", "test"))  # the two fits differ


def test_saved_model_says_what_predict_says(calibrated, open_zoo, tmp_path):
    from tfdnadet.export import export_model

    detector = load_detector(calibrated)
    progan = os.path.join(os.path.dirname(open_zoo["zoo"]), "progan", "seed2")
    files = [os.path.join(open_zoo["planted"], n) for n in sorted(os.listdir(open_zoo["planted"]))[:8]]
    files += [os.path.join(progan, n) for n in sorted(os.listdir(progan))[:8]]
    python = [r.verdict for r in attribute(detector, files)[0]]
    served = tf.saved_model.load(export_model(calibrated, "open", base=str(tmp_path / "serving")).path)
    # A last image that does not decode: defined outputs for it, the others answered as if alone.
    encoded = [open(f, "rb").read() for f in files] + [b"not an image"]
    outputs = served.signatures["serving_default"](images_bytes=tf.constant(encoded))
    assert outputs["valid"].numpy().tolist() == [1] * len(files) + [0]
    assert python == [v.decode() for v in outputs["verdict"].numpy()[:-1]] and outputs["verdict"].numpy()[-1] == b""
    assert UNKNOWN in python and "progan" in python, python
    python_knownness = predict_loaded(detector, load_for_detector(detector, files))[KNOWNNESS]
    np.testing.assert_allclose(outputs[KNOWNNESS].numpy()[:-1], python_knownness, rtol=1e-5)
    assert outputs[KNOWNNESS].numpy()[-1] == 0


def test_open_set_evaluation_on_a_zoo(calibrated, open_zoo, tmp_path, monkeypatch, capsys):
    detector = load_detector(calibrated)
    results = evaluate_open_set(detector, open_zoo["zoo"], score="msp")
    assert results["unknown_classes"] == [PLANTED] and results["unknown_count"] == 24
    # cross-seed holds only the planted class: no known image, so it is not a known split.
    assert list(results["splits"]) == ["closed-set"]
    closed = results["splits"]["closed-set"]
    assert closed["count"] == 3 * 24 + 12 and 0 <= closed["false_rejection_at_95"] <= 1 and 0 <= closed["oscr"] <= closed["accuracy"]
    assert results["rejection_threshold"] is results["unknown_refused_by_rule"] is None and "refused_by_rule" not in closed  # msp is not the rule
    (planted,) = results["unknown_models"].values()  # the planted manifest names no generator model: its architecture
    assert list(results["unknown_models"]) == [PLANTED] and planted["count"] == 24 and planted["architecture"] == PLANTED
    assert planted["auroc"] == pytest.approx(auroc(closed["scores"], results["unknown_scores"]))
    assert sum(planted["taken_for"].values()) == pytest.approx(1) and set(planted["taken_for"]) <= set(detector.class_names)
    stored = evaluate_open_set(detector, open_zoo["zoo"])  # the calibrated score: what its own threshold refuses
    threshold = detector.rejection["threshold"]
    assert stored["unknown_refused_by_rule"] == np.mean(stored["unknown_scores"] < threshold)
    closed = stored["splits"]["closed-set"]
    assert closed["refused_by_rule"] == np.mean(closed["scores"] < threshold) == stored["all_known"]["refused_by_rule"]
    code, out, err = run_cli(["evaluate", calibrated, "--protocol", open_zoo["zoo"], "--open-set", "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert "AUROC" in out and "closed-set" in out and "refused by the model's threshold" in out and "each unknown generator model" in out and "refused (%)" in out
    written = json.load(open(tmp_path / "open_set.json"))
    assert written["score"] == "gaussian" and written["splits"]["closed-set"]["auroc"] >= 0.9, written
    assert written["unknown_models"][PLANTED]["refused_by_rule"] == written["unknown_refused_by_rule"]
    assert "unknown_scores" not in written and "unknown_architecture" not in written  # raw per-image arrays stay out
    assert stored["unknown_architecture"] == [PLANTED] * 24
    assert (tmp_path / "open_set_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert set(write_open_set(results, str(tmp_path / "again"), calibrated)) == {"json", "png"}


def test_clear_errors(calibrated, open_zoo, monkeypatch, capsys):
    code, _, err = run_cli(["evaluate", calibrated, "--protocol", open_zoo["zoo"], "--open-set", "--unknown", "progan"], monkeypatch, capsys)
    assert code == 1 and "--unknown progan: the model was trained on it" in err and "Traceback" not in err
    code, _, err = run_cli(["evaluate", calibrated, "--protocol", open_zoo["zoo"], "--open-set", "--unknown", "biggan"], monkeypatch, capsys)
    assert code == 1 and "not an architecture of this zoo" in err
    code, _, err = run_cli(["evaluate", calibrated, "--data", open_zoo["planted"], "--open-set"], monkeypatch, capsys)
    assert code == 1 and "--open-set with --protocol" in err
    monkeypatch.setenv("TFDNADET_MODEL", calibrated)  # MODEL left out: the default model
    code, _, err = run_cli(["calibrate-rejection", "--protocol", open_zoo["zoo"], "--score", "energy"], monkeypatch, capsys)
    assert code == 1 and "Unknown rejection score 'energy'" in err
    with pytest.raises(TfdnadetError, match="needs binary heads"):
        calibrate_rejection(calibrated, "heads", open_zoo["zoo"].replace("zoo.json", "test.csv"))
    with pytest.raises(TfdnadetError, match="gaussian score needs training images"):
        calibrate_rejection(calibrated, "gaussian", open_zoo["zoo"].replace("zoo.json", "test.csv"))
