"""`headstart map`: the cached features in 2-D, one colour a class, suspicious pictures marked.

PCA to 50 dimensions, then t-SNE (scikit-learn) or UMAP (when `umap-learn` is installed), on at
most ``max_points`` rows drawn at random (seeded) from the cache, read a block at a time. Each
point is marked when an out-of-fold logistic regression misclassifies it (`headstart.audit.labels`)
and, given an audit, when the audit flagged it. A ``.png`` is a matplotlib scatter; an ``.html``
is one self-contained page (an SVG, the data, and a small script) that shows a picture's
thumbnail, path and label when the pointer is over its point.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.audit import html as H
from headstart.audit.reading import open_checked, read_rows
from headstart.errors import AuditError

log = logging.getLogger(__name__)

METHODS = ("auto", "tsne", "umap", "pca")
MAX_POINTS = 5000
PCA_DIMS = 50
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
]
# The marks are told apart from the classes by shape, not colour: every colour is some class's.
MISCLASSIFIED_RING = ' stroke="#000000" stroke-width="1.5"'
FLAGGED_RING = ' stroke="#000000" stroke-width="2.5" stroke-dasharray="3 2"'


@dataclass
class MapResult:
    out: Path
    method: str
    points: int
    rows: int
    misclassified: int
    flagged: int


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def project(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows ``x`` and the method used."""
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise AuditError(f"Expected --method among {', '.join(METHODS)}. Received: {method!r}.")
    if method == "auto":
        method = "umap" if _umap_available() else "tsne"
    if method == "umap" and not _umap_available():
        raise AuditError("Expected umap-learn for --method umap. Received: not installed; pip install umap-learn.")
    n = len(x)
    dims = max(1, min(PCA_DIMS, n - 1, x.shape[1]))
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x)
    if method == "pca" or n < 5:
        out = reduced[:, :2] if reduced.shape[1] >= 2 else np.column_stack([reduced[:, 0], np.zeros(n)])
        return out.astype(np.float32), "pca"
    if method == "umap":
        import umap

        emb = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed).fit_transform(reduced)
        return np.asarray(emb, dtype=np.float32), "umap"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    emb = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(reduced)
    return emb.astype(np.float32), "tsne"


def _flags_from_audit(audit: dict[str, Any]) -> dict[str, list[str]]:
    from headstart.audit.findings import flags_by_path  # the one way audit, map and report count findings

    return flags_by_path(audit)


def make_map(
    cache_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    audit: dict[str, Any] | None = None,
    method: str = "auto",
    max_points: int = MAX_POINTS,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    thumb: int = 72,
) -> MapResult:
    """Draw the map of ``cache_path`` into ``out`` (.png or .html)."""
    from headstart.audit.labels import out_of_fold_proba

    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".png", ".html", ".htm"):
        raise AuditError(f"Expected --out to end in .png or .html. Received: {out}.")
    if max_points < 3:
        raise AuditError(f"Expected --max-points of at least 3. Received: {max_points}.")
    with open_checked(cache_path) as cache:
        n = len(cache)
        if n < 3:
            raise AuditError(f"Expected a cache of at least 3 pictures to map. Received: {cache_path} ({n} rows).")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
        x = read_rows(cache, rows)
        if not np.isfinite(x).all():
            raise AuditError(f"Expected finite feature values in {cache_path}. Received: NaN or infinity.")
        labels = cache.labels[rows]
        paths = [cache.paths[i] for i in rows]
        class_names = list(cache.class_names)
        base = Path(root) if root is not None else Path(cache.root or ".")
    xy, used = project(x, method, seed)
    present, counts = np.unique(labels, return_counts=True)
    wrong = np.zeros(len(rows), dtype=bool)
    if len(present) >= 2 and counts.min() >= 2:
        proba, _ = out_of_fold_proba(x, labels, len(class_names), seed=seed)
        wrong = proba.argmax(axis=1) != labels
    flags_by_path = _flags_from_audit(audit) if audit else {}
    flags = [flags_by_path.get(p, []) for p in paths]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    title = f"{Path(cache_path).name}: {len(rows):,} of {n:,} pictures, {used}"
    if kind == ".png":
        _draw_png(tmp, xy, labels, class_names, wrong, flags, title)
    else:
        _write_html(tmp, xy, labels, class_names, wrong, flags, paths, base, title, thumb)
    os.replace(tmp, out)
    return MapResult(out, used, len(rows), n, int(wrong.sum()), int(sum(bool(f) for f in flags)))


def _draw_png(path, xy, labels, class_names, wrong, flags, title) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for k, name in enumerate(class_names):
        m = labels == k
        if m.any():
            ax.scatter(
                xy[m, 0],
                xy[m, 1],
                s=12,
                color=PALETTE[k % len(PALETTE)],
                label=name.replace("$", r"\$"),
                alpha=0.8,
                linewidths=0,
            )
    if wrong.any():
        ax.scatter(
            xy[wrong, 0],
            xy[wrong, 1],
            s=40,
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
            label="misclassified (out of fold)",
        )
    flagged = np.array([bool(f) for f in flags])
    if flagged.any():
        ax.scatter(
            xy[flagged, 0],
            xy[flagged, 1],
            s=70,
            marker="x",
            color="black",
            linewidths=1.2,
            label="flagged by the audit",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    ax.set_title(title.replace("$", r"\$"))
    fig.savefig(path, format="png")


MAP_SCRIPT = """
const data = JSON.parse(document.getElementById('map-data').textContent);
const tip = document.getElementById('tip');
const img = tip.querySelector('img');
const caption = tip.querySelector('div');
document.querySelectorAll('circle[data-i]').forEach(function (c) {
  c.addEventListener('mouseenter', function (ev) {
    const p = data.points[Number(c.getAttribute('data-i'))];
    caption.textContent = p.path + '\\n' + p.label + (p.wrong ? ' (misclassified out of fold)' : '') +
      (p.flags.length ? '\\n' + p.flags.join('; ') : '');
    if (p.thumb) { img.src = 'data:image/jpeg;base64,' + p.thumb; img.style.display = 'block'; }
    else { img.removeAttribute('src'); img.style.display = 'none'; }
    tip.style.display = 'block';
  });
  c.addEventListener('mousemove', function (ev) {
    tip.style.left = (ev.pageX + 14) + 'px'; tip.style.top = (ev.pageY + 14) + 'px';
  });
  c.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
});
document.body.setAttribute('data-ready', '1');
"""


def _write_html(path, xy, labels, class_names, wrong, flags, paths, base, title, thumb) -> None:
    from headstart.audit.pictures import thumbnail_jpeg

    size, pad = 900, 20
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    scale = (size - 2 * pad) / np.maximum(hi - lo, 1e-9)
    pos = (xy - lo) * scale + pad
    circles, points = [], []
    order = np.argsort(wrong | np.array([bool(f) for f in flags]), kind="stable")  # marked ones drawn last
    for i in order:
        colour = PALETTE[int(labels[i]) % len(PALETTE)]
        stroke = FLAGGED_RING if flags[i] else (MISCLASSIFIED_RING if wrong[i] else "")
        radius = 6 if flags[i] or wrong[i] else 4
        circles.append(
            f'<circle data-i="{int(i)}" cx="{pos[i, 0]:.1f}" cy="{size - pos[i, 1]:.1f}" r="{radius}" '
            f'fill="{colour}" fill-opacity="0.8"{stroke}></circle>'
        )
    for i, p in enumerate(paths):
        jpeg = thumbnail_jpeg(base, p, thumb)
        points.append(
            {
                "path": p,
                "label": class_names[int(labels[i])],
                "wrong": bool(wrong[i]),
                "flags": flags[i],
                "thumb": base64.b64encode(jpeg).decode("ascii") if jpeg else None,
            }
        )
    legend = " ".join(
        f'<span style="color:{PALETTE[k % len(PALETTE)]}">&#9679;</span> {H.esc(name)}'
        for k, name in enumerate(class_names)
    )
    body = (
        f"<h1>{H.esc(title)}</h1>"
        f"<p>{legend} &nbsp; solid black ring: misclassified out of fold ({int(wrong.sum())}); "
        f"dashed black ring: flagged by the audit ({sum(bool(f) for f in flags)}). "
        "Point at a dot to see the picture.</p>"
        f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}" style="border:1px solid #d0d7de">'
        + "".join(circles)
        + "</svg>"
        '<div id="tip" style="display:none;position:absolute;background:#fff;border:1px solid #888;padding:4px;'
        'max-width:260px;pointer-events:none;white-space:pre-wrap;font-size:12px">'
        '<img alt="" style="max-width:250px;display:none"><div></div></div>'
        + H.json_script("map-data", {"points": points})
    )
    path.write_text(H.page(title, body, MAP_SCRIPT), encoding="utf-8")
