"""PNG pictures shared by evaluation, explanations and training: confusion matrices, training curves, open-set score
distributions, saving figures."""

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfdnadet.atomic import atomic_path  # noqa: E402


def plot_confusion_matrix(matrix: np.ndarray, class_names: list, path: str, title: str = "Confusion matrix") -> None:
    """Row-normalised confusion matrix (true class per row), counts written in the cells."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(4.0, 0.7 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    save_figure(fig, path)


# history.csv column -> legend: the gap between held-out images of the training generators and generator models
# not in training is what model selection watches (tfdnadet.training.selection).
ACCURACY_CURVES = {
    "accuracy": "accuracy (training patches)",
    "val_accuracy": "val_accuracy (held-out patches)",
    "heldout_images_accuracy": "held-out images, training generators",
    "val_models_accuracy": "validation generator models",
    "val_models_augmented_accuracy": "validation generator models, data.augment",
}


def plot_training_curves(history_csv: str, path: str) -> None:
    """Loss and accuracy per epoch from a Keras CSVLogger file."""
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.6))
    for key in ("loss", "supcon", "ce", "val_loss"):
        if key in rows[0]:
            loss_ax.plot(epochs, [_cell(r[key]) for r in rows], marker="o", label=key)
    for key, label in ACCURACY_CURVES.items():
        if key in rows[0]:
            acc_ax.plot(epochs, [_cell(r[key]) for r in rows], marker="o", label=label)
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    acc_ax.set_ylim(0, 1.02)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize="small")  # below: curves stay visible
    fig.tight_layout()
    save_figure(fig, path)


def plot_score_distributions(known: dict, unknown: dict, thresholds: dict, score_name: str, path: str) -> None:
    """Histograms on shared bins of the known groups (solid) and the unknown ones (dashed), {name: scores}, with a
    vertical line per threshold {label: value}. Scores beyond +-10 that span powers of ten (the Gaussian's minus squared
    distances) are drawn on a log scale, sign kept, so that a long tail does not squeeze every group into one bin."""
    groups = {**known, **unknown}
    values = np.concatenate([np.asarray(v, np.float64) for v in groups.values()])
    fig, ax = plt.subplots(figsize=(7, 4))
    magnitudes = np.abs(values)
    spans_decades = values.min() <= 0 <= values.max() or magnitudes.max() >= 10 * magnitudes.min()
    logarithmic = magnitudes.max() > 10 and spans_decades
    forward, inverse = (_signed_log, _signed_exp) if logarithmic else (_same, _same)
    if logarithmic:
        ax.set_xscale("symlog", linthresh=1)  # its ticks are powers of ten; bins near-even on it from _signed_log
    bins = inverse(np.linspace(forward(values.min()), forward(values.max()) + 1e-9, 31))
    for name, group in groups.items():
        style = "--" if name in unknown else "-"
        ax.hist(group, bins=bins, weights=np.full(len(group), 1 / len(group)), histtype="step",
                linewidth=1.5, linestyle=style, label=f"{name} ({len(group)})")
    for (label, value), style in zip(thresholds.items(), (":", "-.")):
        ax.axvline(value, color="black", linestyle=style, label=label)
    ax.set_xlabel(f"knownness ({score_name}): higher = more like a known class")
    ax.set_ylabel("share of the group's images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _signed_log(values):
    values = np.asarray(values, np.float64)
    return np.sign(values) * np.log10(1 + np.abs(values))


def _signed_exp(values):
    values = np.asarray(values, np.float64)
    return np.sign(values) * (10 ** np.abs(values) - 1)


def _same(values):
    return np.asarray(values, np.float64)


def _cell(text: str) -> float:
    """A CSVLogger cell as a number; its "NA" (a value the epoch did not log) becomes a gap in the curve."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG atomically and free it."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
