"""The evaluation report (`evaluate --report`), t-SNE, Grad-CAM examples and the 4x4 patch-agreement check."""

import json
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from conftest import run_cli
from tfdnadet.evaluation.consistency import grid_patches, patch_agreement
from tfdnadet.evaluation.evaluate import load_labelled
from tfdnadet.evaluation.report import EXAMPLES_PER_CLASS, Section, evaluate_with_report, pick_examples, render_html, tsne_embedding
from tfdnadet.inference import predict_loaded
from tfdnadet.models.model_dir import load_detector

SECTIONS = ("Metrics", "Confusion matrix", "Patch agreement", "t-SNE of encoder features", "Grad-CAM examples", "Training curves")


def test_evaluate_report_holds_every_section_with_decodable_pictures(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    report = tmp_path / "report"
    args = ["evaluate", trained_run.model_dir, "--data", gan_images["test"], "--report", report, "--tsne-samples", 40, "--out", tmp_path / "eval"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "patch agreement" in out and f"wrote {report / 'report.md'}" in err
    markdown = (report / "report.md").read_text()
    assert re.findall(r"^## (.+)$", markdown, re.M) == list(SECTIONS)
    assert "40 of 84 images" in markdown
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert {"confusion.png", "tsne.png", "curves.png"} <= set(pictures)
    assert sorted(p for p in pictures if p.startswith("gradcam_")) == [f"gradcam_{i:02d}.png" for i in range(4)]
    for picture in pictures:
        with Image.open(report / picture) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pictures) and "<img" in page and 'src="confusion.png"' not in page
    assert all(f"<h2>{html_title}</h2>" in page for html_title in ("Metrics", "Confusion matrix", "Patch agreement", "Grad-CAM examples"))
    metrics = json.load(open(tmp_path / "eval" / "evaluation.json"))
    assert f"{metrics['accuracy']:.4f}" in markdown
    for name, agreement in metrics["patch_agreement"].items():
        assert 0.25 <= agreement <= 1.0 and f"| {name} | {agreement:.3f} |" in markdown


def test_report_judges_right_and_wrong_as_evaluate_does(trained_run, gan_images, tmp_path):
    """Grad-CAM picks and t-SNE rings come from the predictions on the model's patch grid, as the metrics do."""
    detector = load_detector(trained_run.model_dir)
    assert detector.preprocessing.predict_on == "patches"
    metrics, paths = evaluate_with_report(detector, gan_images["test"], str(tmp_path / "report"), tsne_samples=1000)
    markdown = open(paths["markdown"]).read()
    confusion = np.asarray(metrics["confusion_matrix"])
    wrong = int(confusion.sum() - np.trace(confusion))
    assert f"{confusion.sum()} of {confusion.sum()} images" in markdown and f"; {wrong} wrongly attributed (ringed)" in markdown
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if re.match(r"^\| .+ \| (right|WRONG) \|$", line)]
    for index, name in enumerate(metrics["class_names"]):
        judged = [row[4].strip() for row in rows if row[0].strip() == name]
        right, missed = int(confusion[index, index]), int(confusion[index].sum() - confusion[index, index])
        assert judged == ["right"] * min(EXAMPLES_PER_CLASS, right) + ["WRONG"] * min(EXAMPLES_PER_CLASS, missed), name
    assert len(rows) == sum(min(EXAMPLES_PER_CLASS, int(n)) for n in np.diag(confusion)) + sum(
        min(EXAMPLES_PER_CLASS, int(n)) for n in confusion.sum(axis=1) - np.diag(confusion)
    )
    assert all((row[2].strip() == row[0].strip()) == (row[4].strip() == "right") for row in rows)
    # Judged on whole images (the old report) this model gives other probabilities, often another class.
    loaded = load_labelled(detector, gan_images["test"])
    on_whole = predict_loaded(detector.with_preprocessing(predict_on="whole"), loaded)["multiclass"]
    assert not np.allclose(predict_loaded(detector, loaded)["multiclass"], on_whole, atol=1e-3)


def test_report_without_a_training_history_says_so(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    args = ["evaluate", trained_run.model_dir, "--data", gan_images["test"], "--report", tmp_path / "r", "--run", tmp_path, "--tsne-samples", 5]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert f"No training history (history.csv) found in {tmp_path}." in markdown and "curves.png" not in markdown
    code, _, err = run_cli([*args[:-1], 2], monkeypatch, capsys)
    assert code == 1 and err.strip() == "error: The t-SNE plot needs at least 3 samples. Received: tsne_samples=2"


def test_tsne_runs_on_a_tiny_feature_set_and_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (6, 8)), rng.normal(5, 0.1, (6, 8))]).astype(np.float32)
    points = tsne_embedding(features, seed=0)
    assert points.shape == (12, 2) and np.all(np.isfinite(points))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    assert np.all((nearest < 6) == (np.arange(12) < 6))


def test_pick_examples_takes_the_most_confident_right_then_wrong():
    labels = np.array([0, 0, 0, 0, 1, 0])
    predicted = np.array([0, 1, 0, 0, 1, 2])
    confidence = np.array([0.5, 0.9, 0.8, 0.7, 0.99, 0.6])
    np.testing.assert_array_equal(pick_examples(labels, predicted, confidence, 0, count=2), [2, 3, 1, 5])
    np.testing.assert_array_equal(pick_examples(labels, predicted, confidence, 1, count=2), [4])


def test_html_escapes_text_and_embeds_pictures(tmp_path):
    Image.new("RGB", (4, 4), "red").save(tmp_path / "dot.png")
    page = render_html("t", "x <y>", [Section("A & B", "**bold** `<code>`", [["h"], ["<td>"]], ["dot.png"])], str(tmp_path))
    assert "<h2>A &amp; B</h2>" in page and "<b>bold</b> <code>&lt;code&gt;</code>" in page and "<td>&lt;td&gt;</td>" in page
    assert page.count("data:image/png;base64,") == 1 and "x &lt;y&gt;" in page


def test_grid_patches_go_row_by_row_may_overlap_and_agreement_counts_the_majority():
    cells = np.arange(16, dtype=np.float32).reshape(4, 4)
    image = np.kron(cells, np.ones((3, 3), np.float32))[None, ..., None]  # 12x12, each 3x3 cell holds its index
    patches = grid_patches(tf.constant(np.concatenate([image, image + 100])), grid=4).numpy()
    assert patches.shape == (32, 3, 3, 1)
    np.testing.assert_array_equal(patches[:, 0, 0, 0], np.concatenate([np.arange(16), np.arange(16) + 100]))
    overlapping = grid_patches(tf.reshape(tf.range(64 * 64, dtype=tf.float32), [1, 64, 64, 1]), grid=4, size=32).numpy()
    assert overlapping.shape == (16, 32, 32, 1)
    np.testing.assert_array_equal(overlapping[:5, 0, 0, 0], [0, 11, 21, 32, 11 * 64])  # corners evenly spaced, 0..32
    votes = np.array([[2] * 16, [0] * 12 + [1] * 4, [0, 1, 2, 3] * 4])
    np.testing.assert_allclose(patch_agreement(votes), [1.0, 0.75, 0.25])
