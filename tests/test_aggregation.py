"""Test-time aggregation: overlapping and multi-scale patch grids, the aggregation rule, and the same answer in
predict, evaluate, Grad-CAM, the report and the SavedModel."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tfdnadet.data.preprocess import to_model_input
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_dataset, load_labelled
from tfdnadet.evaluation.report import evaluate_with_report
from tfdnadet.explain.gradcam import GradCAM
from tfdnadet.export import export_model
from tfdnadet.inference import predict_loaded
from tfdnadet.models.detector import MEAN_LOGIT, MEAN_PROBABILITY, MULTICLASS, VOTE, Detector, Preprocessing, patch_grid, untile
from tfdnadet.models.encoder import Encoder
from tfdnadet.models.heads import BinaryHead, MulticlassHead
from tfdnadet.models.model_dir import load_detector, save_detector

GRID = {"predict_on": "patches", "grid_stride": 16, "grid_scales": (1.0, 0.5)}  # 64 px input, 32 px cells: 9 + 1 cells


def test_overlapping_multiscale_grid_and_its_inverse():
    images = tf.reshape(tf.range(2 * 8 * 8, dtype=tf.float32), [2, 8, 8, 1])
    cells, count = patch_grid(images, 4, 2, (1.0, 0.5))
    assert int(count) == 9 + 1 and cells.shape == (20, 4, 4, 1)
    np.testing.assert_array_equal(cells[1, :, :, 0], images[0, 0:4, 2:6, 0])  # first image, second cell of the first row
    np.testing.assert_array_equal(cells[10 + 4, :, :, 0], images[1, 2:6, 2:6, 0])  # second image (cells 10..19), centre cell
    half = tf.image.resize(images, [4, 4], method="bilinear", antialias=True)
    np.testing.assert_allclose(cells[9, :, :, 0], half[0, :, :, 0], rtol=1e-6)  # the image at scale 0.5 is one cell
    # Maps of overlapping cells go back to the pixels they came from (each the mean of its cells).
    np.testing.assert_array_equal(untile(patch_grid(images, 4, 2)[0][..., 0], tf.shape(images), 4, 2), images[..., 0])
    # A remainder no cell covers stays 0; the default grid is the non-overlapping one.
    wide = tf.ones([1, 10, 10, 1])
    cells, count = patch_grid(wide, 4)
    assert int(count) == 4
    back = untile(cells[..., 0], tf.shape(wide), 4).numpy()[0]
    assert back[:8, :8].min() == 1.0 and back[8:].max() == 0.0 and back[:, 8:].max() == 0.0


def test_grid_fields_are_checked_and_saved_with_the_model(tmp_path):
    with pytest.raises(TfdnadetError, match="aggregation must be one of"):
        Preprocessing(32, 64, 32, 10**8, "patches", aggregation="max")
    with pytest.raises(TfdnadetError, match="grid_stride must be a positive integer"):
        Preprocessing(32, 64, 32, 10**8, "patches", grid_stride=0)
    with pytest.raises(TfdnadetError, match="at least one 32 px patch wide"):
        Preprocessing(32, 64, 32, 10**8, "patches", grid_scales=[1.0, 0.25])
    detector = small_detector(Preprocessing(32, 64, 32, 10**8, aggregation=VOTE, **GRID))
    save_detector(detector, str(tmp_path / "model"))
    saved = json.loads((tmp_path / "model" / "detector.json").read_text())["preprocessing"]
    assert saved["aggregation"] == VOTE and saved["grid_stride"] == 16 and saved["grid_scales"] == [1.0, 0.5]
    assert load_detector(str(tmp_path / "model")).preprocessing == detector.preprocessing


def small_detector(preprocessing: Preprocessing) -> Detector:
    backbone = Encoder(width=0.125, name="encoder")
    detector = Detector(backbone, {}, {}, preprocessing, {})
    detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, 3, name=MULTICLASS), {"class_names": ["real", "progan", "sngan"]})
    detector.add_head("progan", BinaryHead(backbone.feature_dim, 8, name="progan"), {"threshold": 0.5})
    return detector


def test_each_rule_combines_the_cells_as_it_says():
    detector = small_detector(Preprocessing(32, 64, 32, 10**8, **GRID))
    images = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    cells, count = patch_grid(images, 32, 16, (1.0, 0.5))
    features = detector.backbone(cells, training=False)
    logits = {name: np.asarray(head(features, training=False)).reshape(3, int(count), -1) for name, head in detector.heads.items()}
    softmax = tf.nn.softmax(logits[MULTICLASS]).numpy()
    sigmoid = 1 / (1 + np.exp(-logits["progan"]))
    expected = {
        MEAN_PROBABILITY: (softmax.mean(axis=1), sigmoid.mean(axis=1)),
        MEAN_LOGIT: (tf.nn.softmax(logits[MULTICLASS].mean(axis=1)).numpy(), 1 / (1 + np.exp(-logits["progan"].mean(axis=1)))),
        VOTE: (np.eye(3)[softmax.argmax(axis=-1)].mean(axis=1), (sigmoid >= 0.5).mean(axis=1)),
    }
    for rule, (multiclass, binary) in expected.items():
        outputs = detector.with_preprocessing(aggregation=rule).predict(images)
        np.testing.assert_allclose(outputs[MULTICLASS], multiclass, atol=1e-5, err_msg=rule)
        np.testing.assert_allclose(outputs["progan"], binary, atol=1e-5, err_msg=rule)
    assert not np.allclose(expected[MEAN_PROBABILITY][0], expected[VOTE][0], atol=1e-3)


@pytest.fixture(scope="module")
def test_paths(gan_images):
    with open(gan_images["test"]) as f:
        rows = [line.strip().split(",") for line in f.readlines()[1:]]
    return [(os.path.join(gan_images["root"], path), label) for path, label in rows][::4]


def saved_with_rule(trained_run, rule: str, tmp_path) -> tuple:
    """The tiny trained model saved with the overlapping multi-scale grid and `rule` -> (its directory, trained model)."""
    trained = load_detector(trained_run.model_dir)
    save_detector(trained.with_preprocessing(aggregation=rule, **GRID), str(tmp_path / "model"))
    return str(tmp_path / "model"), trained


def write_manifest(paths: list, tmp_path) -> str:
    manifest = tmp_path / "test.csv"
    manifest.write_text("path,label\n" + "".join(f"{path},{label}\n" for path, label in paths))
    return str(manifest)


@pytest.mark.parametrize("rule", [MEAN_PROBABILITY, MEAN_LOGIT, VOTE])
def test_predict_evaluate_gradcam_and_savedmodel_give_the_same_answer(rule, trained_run, test_paths, tmp_path):
    model_dir, trained = saved_with_rule(trained_run, rule, tmp_path)
    detector = load_detector(model_dir)
    manifest = write_manifest(test_paths, tmp_path)
    loaded = load_labelled(detector, manifest, allow_outside_root=True)
    predicted = predict_loaded(detector, loaded)[MULTICLASS]
    assert not np.allclose(predicted, predict_loaded(trained, loaded)[MULTICLASS], atol=1e-3)  # the grid and rule are used
    metrics = evaluate_dataset(detector, manifest, allow_outside_root=True)
    confusion = np.zeros((len(detector.class_names),) * 2, int)
    np.add.at(confusion, (loaded.labels, predicted.argmax(axis=1)), 1)
    np.testing.assert_array_equal(metrics["confusion_matrix"], confusion)
    # Grad-CAM explains the class the aggregated answer picks, with its probability.
    result = GradCAM(detector)(to_model_input(loaded.images, detector.preprocessing.input_size))
    np.testing.assert_array_equal(result.targets, predicted.argmax(axis=1))
    np.testing.assert_allclose(result.scores, predicted.max(axis=1), atol=1e-5)
    assert result.heatmaps.shape == (len(loaded.paths), 64, 64) and np.all(np.isfinite(result.heatmaps))
    # The SavedModel, from the encoded files.
    export = export_model(model_dir, "aggregation", str(tmp_path / "base"))
    served = tf.saved_model.load(export.path).signatures["serving_default"]
    encoded = tf.constant([open(path, "rb").read() for path in loaded.paths])
    np.testing.assert_allclose(served(images_bytes=encoded)["multiclass_probabilities"].numpy(), predicted, atol=1e-5)


def test_the_report_judges_with_the_models_rule(trained_run, test_paths, tmp_path):
    detector = load_detector(saved_with_rule(trained_run, VOTE, tmp_path)[0])
    manifest = write_manifest(test_paths, tmp_path)
    loaded = load_labelled(detector, manifest, allow_outside_root=True)
    predicted = predict_loaded(detector, loaded)[MULTICLASS]
    _, paths = evaluate_with_report(detector, manifest, str(tmp_path / "report"), tsne_samples=5, allow_outside_root=True)
    names = [os.path.basename(p) for p in loaded.paths]
    rows = [line.strip("|").split(" | ") for line in open(paths["markdown"]).read().splitlines() if re.match(r"^\| .+ \| (right|WRONG) \|$", line)]
    assert rows
    for true, image, chosen, probability, _ in (cells_of(row) for row in rows):
        index = next(i for i, name in enumerate(names) if name == image and detector.class_names[loaded.labels[i]] == true)
        assert chosen == detector.class_names[predicted[index].argmax()] and probability == f"{predicted[index].max():.2f}"


def cells_of(row: list) -> list:
    return [cell.strip().strip("`") for cell in row]
