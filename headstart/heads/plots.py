"""PNG reports of a run: learning curves, confusion matrix, reliability diagram, comparison, montage.

Matplotlib is imported inside each function and drawn on a bare ``Figure`` with the Agg canvas,
so no global backend is switched and nothing needs a display.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError, UnsafeFileError
from headstart.files import read_regular

log = logging.getLogger(__name__)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg", ".webp": "webp"}


def check_image_path(path: Path, option: str) -> Path:
    """A picture path whose suffix names a format we can write (its folder is created when saving)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise HeadstartError(f"Expected {option} to end in one of {', '.join(IMAGE_FORMATS)}. Received: {path}.")
    if path.exists() and path.is_dir():
        raise HeadstartError(f"Expected {option} to be a file path. Received: {path} (a folder).")
    return path


def _save(fig, path: Path) -> Path:
    """Save in the format the suffix names (PNG by default), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=IMAGE_FORMATS.get(path.suffix.lower(), "png"))
    return path


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str = "", chosen: float | None = None) -> Path:
    """Training and validation loss and accuracy per epoch (or along the ``C`` path of ``logreg``).

    ``chosen`` (the epoch kept by early stopping, or the ``C`` kept) is marked with a dotted line.
    """
    fig = _figure(9, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    by_c = bool(history) and "C" in history[0]
    x_key = next((k for k in ("C", "k") if history and k in history[0]), "epoch")
    x = [row[x_key] for row in history]
    for ax, key, label in ((ax_loss, "loss", "log loss"), (ax_acc, "accuracy", "accuracy")):
        for prefix, name in (("", "training"), ("val_", "validation")):
            ys = [row.get(prefix + key) for row in history]
            if any(v is not None for v in ys):
                ax.plot(
                    x, [np.nan if v is None else v for v in ys], marker="o" if x_key != "epoch" else None, label=name
                )
        if chosen is not None:
            ax.axvline(chosen, color="gray", linestyle=":", label=f"kept ({x_key} {chosen:g})")
        ax.set_xlabel({"C": "C (inverse regularization)", "k": "k (neighbours)"}.get(x_key, "epoch"))
        ax.set_ylabel(label)
        if by_c and len(set(x)) > 1:
            ax.set_xlim(min(x) / 2, max(x) * 2)  # a curve of one point must not collapse the axis
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """Confusion matrix, rows true class, columns predicted class, counts written in the cells."""
    cm = np.asarray(matrix)
    n = len(class_names)
    side = min(12.0, 2.5 + 0.45 * n)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=class_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def plot_calibration(
    bins: Sequence[Mapping[str, Any]],
    ece: float,
    path: Path,
    title: str = "",
    before: tuple[Sequence[Mapping[str, Any]], float] | None = None,
) -> Path:
    """Reliability diagram: accuracy against confidence per bin, with the share of rows below.

    ``before`` (bins, ECE) of the uncalibrated head draws it too, as points and a line.
    """
    fig = _figure(5, 6)
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    lo = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    acc = np.array([b.get("accuracy", np.nan) for b in bins])
    count = np.array([b["count"] for b in bins])
    label = "accuracy" if before is None else f"after calibration (ECE {ece:.3f})"
    ax.bar(lo, np.nan_to_num(acc), width=width, align="edge", edgecolor="black", alpha=0.7, label=label)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    if before is not None:
        b_bins, b_ece = before
        pts = [(b["confidence"], b["accuracy"]) for b in b_bins if b.get("count")]
        if pts:
            ax.plot(*zip(*pts), "o-", color="tab:red", label=f"before calibration (ECE {b_ece:.3f})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(title or f"reliability (ECE {ece:.3f})")
    ax_n.bar(lo, count / max(1, count.sum()), width=width, align="edge", edgecolor="black")
    ax_n.set_xlabel("confidence of the predicted class")
    ax_n.set_ylabel("share")
    ax_n.set_xlim(0, 1)
    return _save(fig, path)


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Validation and test accuracy per head, with fit seconds in the labels."""
    fig = _figure(max(5, 1.6 * len(rows) + 2), 4)
    ax = fig.subplots()
    x = np.arange(len(rows))
    w = 0.38
    for k, (key, name) in enumerate((("val_accuracy", "validation"), ("test_accuracy", "test"))):
        vals = [np.nan if r.get(key) is None else r[key] for r in rows]
        bars = ax.bar(x + (k - 0.5) * w, vals, width=w, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, labels=[f"{r['head']}\n{r['fit_seconds']:.1f} s" for r in rows])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.08)
    ax.legend(loc="lower right")
    ax.set_title("heads on the same split")
    return _save(fig, path)


def plot_montage(items: Sequence[Mapping[str, Any]], path: Path, columns: int = 5, thumb: int = 160) -> Path:
    """A grid of pictures, each captioned ``true → predicted (p)``; unreadable ones drawn blank.

    Each item needs ``file`` (a path), ``true``, ``predicted`` and ``probability``.
    """
    from PIL import Image, ImageOps

    n = max(1, len(items))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = _figure(cols * thumb / 80, rows * (thumb / 80 + 0.35))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, item in zip(axes, items):
        try:
            with Image.open(io.BytesIO(read_regular(item["file"]))) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((thumb, thumb))
                ax.imshow(np.asarray(im))
        except (OSError, ValueError, Image.DecompressionBombError, UnsafeFileError) as err:
            log.warning("montage: cannot read %s (%s)", item["file"], err)
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{item['true']} → {item['predicted']} ({item['probability']:.2f})", fontsize=8)
    return _save(fig, path)


def plot_sweep_param(rows: Sequence[Mapping[str, Any]], name: str, path: Path, head: str = "") -> Path:
    """Validation accuracy of every trial against one searched option; the best trial ringed.

    Numbers go on a linear axis (logarithmic when they span a factor of 50 or more), anything
    else (``class_weight``) on a categorical one. A trial that did not set the option is left out.
    """
    fig = _figure(5.5, 3.8)
    ax = fig.subplots()
    pts = [(r["params"][name], r["val"]["accuracy"], r.get("rank", 0)) for r in rows if name in r["params"]]
    values = [p[0] for p in pts]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        xs = np.array(values, dtype=float)
    else:
        cats = list(dict.fromkeys("none" if v is None else str(v) for v in values))
        xs = np.array([cats.index("none" if v is None else str(v)) for v in values], dtype=float)
        ax.set_xticks(range(len(cats)), labels=cats)
    ys = np.array([p[1] for p in pts], dtype=float)
    ax.scatter(xs, ys, alpha=0.7, label="trials")
    best = [i for i, p in enumerate(pts) if p[2] == 1]
    if best:
        ax.scatter(xs[best], ys[best], s=160, facecolors="none", edgecolors="tab:red", linewidths=2, label="best")
    if numeric and len(xs) and xs.min() > 0 and xs.max() / xs.min() >= 50:
        ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{head + ': ' if head else ''}validation accuracy by {name}")
    return _save(fig, path)


def plot_learning_curve(
    rows: Sequence[Mapping[str, Any]], caches: Sequence[Mapping[str, Any]], path: Path, head: str = ""
) -> Path:
    """Test accuracy and log loss against labelled pictures per class, one line per cache (mean, with
    the spread of the draws shaded); the whole training split is drawn at its mean per class."""
    fig = _figure(10, 4)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for info in caches:
        mine = [r for r in rows if r["cache"] == info["path"]]
        n_classes = max(1, len(info.get("train_counts") or {}))
        x = np.array([r["n_train"] / n_classes if r["per_class"] == "all" else r["per_class"] for r in mine], float)
        label = f"{info.get('backbone')} {info.get('layer')}" if len(caches) > 1 else Path(info["path"]).name
        for ax, key in ((ax_acc, "accuracy"), (ax_loss, "log_loss")):
            mean = np.array([r[f"{key}_mean"] for r in mine])
            std = np.array([r[f"{key}_std"] for r in mine])
            ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    for ax, name in ((ax_acc, "test accuracy"), (ax_loss, "test log loss")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled training pictures per class")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"{head}: learning curve (mean and spread of the draws; last point: the whole training split)")
    return _save(fig, path)
