"""A self-contained evaluation report: report.md and report.html (images embedded) with the metrics, confusion
matrix, patch agreement [3], t-SNE of encoder features [Fig. 1], Grad-CAM of right and wrong predictions
[Fig. 6, 13] and the training curves."""

import base64
import datetime
import html
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from sklearn.manifold import TSNE

from tfdnadet.atomic import atomic_path
from tfdnadet.data.pipeline import LoadedImages
from tfdnadet.errors import TfdnadetError
from tfdnadet.evaluation.evaluate import evaluate_loaded, load_labelled
from tfdnadet.plots import plot_confusion_matrix, plot_training_curves, plt, save_figure
from tfdnadet.explain.fingerprint import fingerprint_loaded, has_fingerprints, load_generator
from tfdnadet.explain.gradcam import GradCAM, explain_loaded, plot_gradcam_grid
from tfdnadet.inference import predict_loaded_with_features
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.encoder import POOL_LAYER

TSNE_SAMPLES = 500  # images drawn for the t-SNE plot (t-SNE is quadratic in their number)
EXAMPLES_PER_CLASS = 3  # Grad-CAM examples of right and of wrong predictions per class


@dataclass
class Section:
    title: str
    text: str = ""
    table: Optional[list] = None  # rows of cells; the first row is the header
    images: list = field(default_factory=list)  # PNG file names inside the report folder


def evaluate_with_report(
    detector: Detector,
    data: str,
    report_dir: str,
    *,
    batch_size: int = 16,
    class_names: Optional[list] = None,
    allow_outside_root: bool = False,
    run_dir: Optional[str] = None,
    tsne_samples: int = TSNE_SAMPLES,
    seed: int = 0,
    model_dir: Optional[str] = None,
) -> tuple:
    """evaluate_dataset's metrics, plus the report on the same images -> (metrics, {"markdown", "html"})."""
    _check_tsne_samples(tsne_samples)
    loaded = load_labelled(detector, data, class_names, allow_outside_root)
    metrics = evaluate_loaded(detector, loaded, data, batch_size)
    paths = write_report(
        detector, loaded, metrics, report_dir, run_dir=run_dir, tsne_samples=tsne_samples, batch_size=batch_size, seed=seed, model_dir=model_dir
    )
    return metrics, paths


def write_report(
    detector: Detector,
    loaded: LoadedImages,
    metrics: dict,
    out_dir: str,
    *,
    run_dir: Optional[str] = None,
    tsne_samples: int = TSNE_SAMPLES,
    batch_size: int = 16,
    seed: int = 0,
    model_dir: Optional[str] = None,
) -> dict:
    """Write report.md, report.html and their PNGs into out_dir; return the two report paths.

    `model_dir`: where `detector` was loaded from; a GFD-Net model's fingerprint sheet is added from it.
    """
    _check_tsne_samples(tsne_samples)
    os.makedirs(out_dir, exist_ok=True)
    # The detector's own pass, as evaluate's: the answers judged right or wrong here are the ones in the metrics.
    outputs, features = predict_loaded_with_features(detector, loaded, [POOL_LAYER], batch_size)
    features, probabilities = features[POOL_LAYER].mean(axis=1), outputs[MULTICLASS]
    names = detector.class_names
    sections = [
        _metrics_section(metrics),
        _confusion_section(metrics, out_dir),
        _agreement_section(metrics),
        _tsne_section(features, loaded.labels, probabilities.argmax(axis=1), names, out_dir, tsne_samples, seed),
        _gradcam_section(detector, loaded, probabilities, out_dir, batch_size),
        _curves_section(run_dir, out_dir),
    ]
    if model_dir and has_fingerprints(model_dir):
        sections.append(_fingerprint_section(detector, model_dir, loaded, out_dir, batch_size))
    title = "tfdnadet evaluation report"
    intro = (
        f"Data: `{metrics['data']}` — {metrics['count']} images, {len(metrics['skipped'])} skipped. "
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')}."
    )
    paths = {"markdown": os.path.join(out_dir, "report.md"), "html": os.path.join(out_dir, "report.html")}
    _write_text(paths["markdown"], render_markdown(title, intro, sections))
    _write_text(paths["html"], render_html(title, intro, sections, out_dir))
    return paths


def _check_tsne_samples(samples: int) -> None:
    if samples < 3:
        raise TfdnadetError(f"The t-SNE plot needs at least 3 samples. Received: tsne_samples={samples}")


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of feature vectors [N, D] -> [N, 2]; perplexity shrinks for small N."""
    perplexity = min(30.0, max(1.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def plot_tsne(points: np.ndarray, labels: np.ndarray, wrong: np.ndarray, class_names: list, path: str) -> None:
    """Points coloured by true class; wrongly attributed images are ringed in black."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for index, name in enumerate(class_names):
        members = labels == index
        if np.any(members):
            ax.scatter(*points[members].T, s=14, color=colours(index % colours.N), label=name)
    if np.any(wrong):
        ax.scatter(*points[wrong].T, s=40, facecolors="none", edgecolors="black", linewidths=0.8, label="wrong prediction")
    ax.set_title(f"t-SNE of encoder features ({len(points)} images)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def _metrics_section(metrics: dict) -> Section:
    rows = [["class", "precision", "recall", "F1", "support"]]
    for name, m in metrics["per_class"].items():
        rows.append([name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])])
    text = f"Accuracy **{metrics['accuracy']:.4f}**, macro-F1 **{metrics['macro_f1']:.4f}** on {metrics['count']} images."
    return Section("Metrics", text, rows)


def _confusion_section(metrics: dict, out_dir: str) -> Section:
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), metrics["class_names"], os.path.join(out_dir, "confusion.png"))
    return Section("Confusion matrix", "Rows: true class; cells: image counts, shaded by share of the row.", None, ["confusion.png"])


def _agreement_section(metrics: dict) -> Section:
    text = (
        "Each image is cut into a 4x4 grid of patches and every patch is attributed on its own; the agreement of "
        "an image is the share of its patches that vote for their most common class (Section 3: architecture "
        "traces are globally consistent, so 1.0 is expected)."
    )
    if "patch_agreement" not in metrics:
        return Section("Patch agreement", "Not measured: the model was trained on whole images or takes one fixed image size.")
    rows = [["class", "mean patch agreement"]] + [[name, f"{value:.3f}"] for name, value in metrics["patch_agreement"].items()]
    return Section("Patch agreement", text, rows)


def _tsne_section(features, labels, predicted, class_names: list, out_dir: str, samples: int, seed: int) -> Section:
    title = "t-SNE of encoder features"
    if len(features) < 3:
        return Section(title, f"Too few images for t-SNE ({len(features)}).")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(features))[:samples])
    points = tsne_embedding(features[chosen], seed)
    wrong = labels[chosen] != predicted[chosen]
    plot_tsne(points, labels[chosen], wrong, class_names, os.path.join(out_dir, "tsne.png"))
    text = (
        f"Pooled encoder features of {len(chosen)} of {len(features)} images (as the paper's Figure 1), averaged over "
        f"the grid each image is predicted on; {int(wrong.sum())} wrongly attributed (ringed)."
    )
    return Section(title, text, None, ["tsne.png"])


def _gradcam_section(detector: Detector, loaded: LoadedImages, probabilities: np.ndarray, out_dir: str, batch_size: int) -> Section:
    names = detector.class_names
    predicted = probabilities.argmax(axis=1)
    chosen = {label: pick_examples(loaded.labels, predicted, probabilities.max(axis=1), label) for label in np.unique(loaded.labels)}
    explainer = GradCAM(detector, MULTICLASS)
    images, heatmaps = _explain_subset(explainer, loaded, np.concatenate(list(chosen.values())), predicted, detector, batch_size)
    text = f"Encoder layer {explainer.layer}, explaining the predicted class: the most confident right and wrong predictions of each class."
    rows = [["true class", "image", "predicted", "probability", "judged"]]
    rows += [
        [names[label], os.path.basename(loaded.paths[i]), names[predicted[i]], f"{probabilities[i, predicted[i]]:.2f}", "right" if predicted[i] == label else "WRONG"]
        for label, indices in chosen.items()
        for i in indices
    ]
    section = Section("Grad-CAM examples", text, rows)
    start = 0
    for label, indices in chosen.items():
        end = start + len(indices)
        captions = [
            f"{'right' if predicted[i] == label else 'WRONG'}: {os.path.basename(loaded.paths[i])[:24]}\n"
            f"predicted {names[predicted[i]]} {probabilities[i, predicted[i]]:.2f}"
            for i in indices
        ]
        filename = f"gradcam_{label:02d}.png"
        plot_gradcam_grid(images[start:end], heatmaps[start:end], captions, os.path.join(out_dir, filename), title=f"true class {names[label]}", columns=EXAMPLES_PER_CLASS)
        section.images.append(filename)
        start = end
    return section


def _explain_subset(explainer, loaded: LoadedImages, order: np.ndarray, predicted: np.ndarray, detector: Detector, batch_size: int) -> tuple:
    """Grad-CAM of the predicted class for loaded images at `order` -> (uint8 images, heatmaps)."""
    subset = LoadedImages(loaded.images[order], loaded.labels[order], [loaded.paths[i] for i in order], [])
    batches = list(explain_loaded(explainer, subset, detector.preprocessing.input_size, batch_size, predicted[order]))
    return np.concatenate([b[1] for b in batches]), np.concatenate([b[2].heatmaps for b in batches])


def pick_examples(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, label: int, count: int = EXAMPLES_PER_CLASS) -> np.ndarray:
    """Indices of the `count` most confident right, then wrong, predictions among images of class `label`."""
    picked = []
    for right in (True, False):
        members = np.flatnonzero((labels == label) & ((predicted == label) == right))
        picked.append(members[np.argsort(-confidence[members], kind="stable")][:count])
    return np.concatenate(picked)


def _fingerprint_section(detector: Detector, model_dir: str, loaded: LoadedImages, out_dir: str, batch_size: int) -> Section:
    """GFD-Net's fingerprints [4.5, Fig. 4] grouped by true class: mean, its spectrum and examples per class."""
    groups = [detector.class_names[label] for label in loaded.labels]
    result = fingerprint_loaded(detector, load_generator(detector, model_dir), loaded, os.path.join(out_dir, "fingerprints"), batch_size, groups)
    text = (
        "G(x) per true class: the mean fingerprint and the amplitude spectrum of that mean, the class's own part (its mean minus the"
        " mean of all images, which removes the pattern G adds to every image) and its spectrum, then examples (each scaled to its own range)."
    )
    return Section("GFD-Net fingerprints", text, None, [os.path.relpath(result.contact_sheet, out_dir)])


def _curves_section(run_dir: Optional[str], out_dir: str) -> Section:
    title = "Training curves"
    history = os.path.join(run_dir, "history.csv") if run_dir else None
    if not history or not os.path.isfile(history):
        return Section(title, f"No training history (history.csv) found{' in ' + run_dir if run_dir else ''}.")
    plot_training_curves(history, os.path.join(out_dir, "curves.png"))
    return Section(title, f"From `{history}`.", None, ["curves.png"])


def render_markdown(title: str, intro: str, sections: list) -> str:
    lines = [f"# {title}", "", intro, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.table:
            cells = [[str(c).replace("|", "\\|") for c in row] for row in section.table]
            lines += ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
            lines += ["| " + " | ".join(row) + " |" for row in cells[1:]] + [""]
        lines += [f"![{section.title}]({image})\n" for image in section.images]
    return "\n".join(lines)


def render_html(title: str, intro: str, sections: list, out_dir: str) -> str:
    """One HTML file with every PNG embedded as a data URI."""
    parts = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{_inline_html(intro)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{_inline_html(section.text)}</p>")
        if section.table:
            header, *rows = section.table
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        for image in section.images:
            with open(os.path.join(out_dir, image), "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            parts.append(f'<p><img alt="{html.escape(image)}" src="data:image/png;base64,{data}"></p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline_html(text: str) -> str:
    """The little markdown the sections use (**bold**, `code`) as HTML."""
    escaped = html.escape(text).split("**")
    escaped = "".join(f"<b>{part}</b>" if i % 2 else part for i, part in enumerate(escaped))
    pieces = escaped.split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(pieces))


def _write_text(path: str, text: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
