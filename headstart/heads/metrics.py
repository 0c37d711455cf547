"""Metrics of a head's predictions on one split: accuracy, log loss, per class, confusion, calibration.

Everything takes integer labels ``0..C-1`` (indices into ``class_names``) and a probability
matrix with one column per class name, and returns plain JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

N_BINS = 15
TOP_K = 5


def full_proba(proba: np.ndarray, head_classes: Sequence, n_classes: int) -> np.ndarray:
    """Spread a head's columns (its ``classes_``, label indices) over all ``n_classes``, renormalized."""
    out = np.zeros((len(proba), n_classes), dtype=np.float64)
    out[:, np.asarray(head_classes, dtype=np.int64)] = proba
    out /= np.clip(out.sum(axis=1, keepdims=True), 1e-300, None)
    return out


def calibration(y: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error of the top-class confidence, and the reliability bins.

    ECE = sum over equal-width confidence bins of (share of rows) x |accuracy - mean confidence|.
    """
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        row = {"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count}
        if count:
            row["confidence"] = float(conf[mask].mean())
            row["accuracy"] = float(correct[mask].mean())
            ece += count / len(y) * abs(row["accuracy"] - row["confidence"])
        bins.append(row)
    return float(ece), bins


def split_metrics(y: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """All the metrics of one split; ``proba`` has one column per class name.

    ROC AUC is given for two classes (the second is the positive one) and, one-vs-rest macro,
    for three to five; top-5 accuracy for more than five classes.
    """
    y = np.asarray(y, dtype=np.int64)
    n_classes = len(class_names)
    labels = np.arange(n_classes)
    if len(y) == 0:
        return {"n": 0}
    pred = proba.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    ece, bins = calibration(y, proba)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-15, 1.0), labels=labels)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "ece": ece,
        "calibration_bins": bins,
    }
    present = np.unique(y)
    if n_classes == 2:
        out["roc_auc"] = float(roc_auc_score(y, proba[:, 1])) if len(present) == 2 else None
    elif n_classes <= TOP_K:
        ok = len(present) == n_classes
        out["roc_auc_ovr"] = float(roc_auc_score(y, proba, multi_class="ovr", labels=labels)) if ok else None
    else:
        out["top5_accuracy"] = float(top_k_accuracy_score(y, proba, k=TOP_K, labels=labels))
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    """``accuracy 0.912, log loss 0.231, ECE 0.018 (n=3,750)`` for logs and the CLI."""
    if not metrics.get("n"):
        return "no pictures"
    return (
        f"accuracy {metrics['accuracy']:.3f}, log loss {metrics['log_loss']:.3f}, "
        f"ECE {metrics['ece']:.3f} (n={metrics['n']:,})"
    )
