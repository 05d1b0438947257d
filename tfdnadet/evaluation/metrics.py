"""Classification metrics over a model's classes."""

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list) -> dict:
    """Accuracy, macro-F1 over the classes present in the truth, per-class P/R/F1, confusion matrix."""
    all_labels = list(range(len(class_names)))
    present = sorted(set(np.asarray(y_true).tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0
    )
    return {
        "count": int(len(y_true)),
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)) if present else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
            if support[i] or np.any(np.asarray(y_pred) == i)
        },
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=all_labels).tolist(),
    }
