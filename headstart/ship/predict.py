"""Predicting new pictures with a saved run: extract their features as the run's cache was made, then the head.

This joins the two halves of headstart (``extractor`` and ``heads``), so it lives beside them:
``headstart.heads`` never imports the extractor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError, RunError
from headstart.heads import metrics as M
from headstart.heads.run_reader import load_run
from headstart.ship.exported import is_exported, load_exported
from headstart.ship.runs import run_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One picture: its top classes with probabilities, or why it could not be read."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"path": str(self.path), "error": self.error}
        return {
            "path": str(self.path),
            "class": self.label,
            "probability": self.probability,
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


@dataclass(frozen=True)
class PredictResult:
    predictions: list[Prediction]  # in the order the pictures were given / found

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.ok]


def _gather_files(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """Pictures to predict in order, each with None or the reason it is skipped already."""
    from headstart.extractor.scan import find_images

    out: list[tuple[Path, str | None]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            out.append((p, "no such file or folder"))
            continue
        found = find_images([p]) if p.is_dir() else [p]
        if p.is_dir() and not found:
            out.append((p, "no pictures in this folder"))
        for f in found:
            f = Path(f)
            if _key(f) not in seen:
                seen.add(_key(f))
                out.append((f, None))
    return out


MAX_BATCH_PIXELS = 16 << 20
"""Decoded pixels held at once by `predict_exported` (a batch and the pictures waiting for one):
about 200 MB as float32, whatever the number of pictures. A larger picture goes alone."""


def predict_exported(
    model_path: str | os.PathLike, paths: Sequence[str | os.PathLike], top_k: int = 1, batch_size: int = 32
) -> PredictResult:
    """Classify pictures with a model written by ``headstart export``: each picture is decoded
    whole (no resize, no JPEG draft) and the model does the rest, as it would in an app.

    Pictures of one size go through the model together, up to ``batch_size`` at a time and
    `MAX_BATCH_PIXELS` pixels in all: memory stays flat whatever the number and size of the
    pictures (12 MP phone photos go one at a time)."""
    from headstart.extractor.decode import DecodeError, load_pixels

    if top_k < 1:
        raise RunError(f"Expected --top-k of 1 or more. Received: {top_k}.")
    model, class_names = load_exported(model_path)
    items = _gather_files(paths)
    reasons: dict[Path, str] = {_key(f): r for f, r in items if r is not None}
    waiting: dict[tuple[int, int], list[tuple[Path, np.ndarray]]] = {}
    held = 0  # pixels decoded and not yet through the model
    top: dict[Path, list[tuple[str, float]]] = {}
    k = min(top_k, len(class_names))

    def flush(size: tuple[int, int]) -> None:
        nonlocal held
        group = waiting.pop(size)
        files = [f for f, _ in group]
        batch = np.empty((len(group), *group[0][1].shape), dtype=np.float32)
        for i, (_, a) in enumerate(group):
            batch[i] = a
        held -= sum(a.shape[0] * a.shape[1] for _, a in group)
        group.clear()  # the decoded pictures go now; only the float batch stays until predicted
        proba = np.asarray(model.predict_on_batch(batch))
        del batch
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        for f, row, idx in zip(files, proba, order):
            top[_key(f)] = [(class_names[i], float(row[i])) for i in idx]

    for f, reason in items:
        if reason is not None:
            continue
        try:
            pixels = load_pixels(f)
        except DecodeError as err:
            reasons[_key(f)] = str(err)
            continue
        size, n = pixels.shape[:2], pixels.shape[0] * pixels.shape[1]
        while waiting and held + n > MAX_BATCH_PIXELS:  # the budget is spent: the largest groups go first
            flush(max(waiting, key=lambda s: len(waiting[s]) * s[0] * s[1]))
        waiting.setdefault(size, []).append((f, pixels))
        held += n
        del pixels
        if len(waiting[size]) >= batch_size or n >= MAX_BATCH_PIXELS:
            flush(size)
    while waiting:
        flush(next(iter(waiting)))
    return PredictResult(
        [
            Prediction(f, top[_key(f)])
            if _key(f) in top
            else Prediction(f, error=reasons.get(_key(f), "not predicted"))
            for f, _ in items
        ]
    )


def _key(path) -> Path:
    """One key per file however it is named; a path that cannot be resolved (a link loop) keys as itself."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop, before Python 3.13
        return Path(os.path.abspath(path))


def predict(
    run_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    top_k: int = 1,
    batch_size: int = 32,
    weights: str | os.PathLike | None = None,
) -> PredictResult:
    """Classify pictures (files, or folders searched recursively) with a run's head.

    Features are extracted with the run's backbone and settings, read from its fingerprint;
    ``weights`` is the weights file when the cache was extracted with one (its SHA-256 must
    match). A picture that cannot be read becomes a `Prediction` with ``error`` set; the rest
    are still predicted.
    """
    if top_k < 1:
        raise RunError(f"Expected --top-k of 1 or more. Received: {top_k}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HeadstartError(f"Expected --batch-size of at least 1. Received: {batch_size}.")
    if not paths:
        raise RunError("Expected at least one picture or folder to predict. Received: none.")
    if is_exported(run_dir):
        if weights is not None:
            raise RunError(f"Expected no --weights with an exported model (it holds them). Received: {weights}.")
        return predict_exported(run_dir, paths, top_k=top_k, batch_size=batch_size)
    info, head = load_run(run_dir)
    from headstart.extractor.embed import embed_files

    config = run_config(info, run_dir, weights)
    items = _gather_files(paths)
    files = [f for f, reason in items if reason is None]
    reasons: dict[Path, str] = {_key(f): r for f, r in items if r is not None}
    top: dict[Path, list[tuple[str, float]]] = {}
    if files:
        res = embed_files(files, config, batch_size=batch_size)
        reasons.update({_key(f): str(r) for f, r in res.failed})
        if len(res.ok):
            feats = np.asarray(res.features, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != head.n_features_in_:
                raise RunError(
                    f"Expected {head.n_features_in_} features per picture, as in the run's cache. "
                    f"Received: shape {feats.shape} from the extractor; the backbone settings differ."
                )
            class_names = list(info["class_names"])
            proba = M.full_proba(head.predict_proba(feats), head.classes_, len(class_names))
            if res.flipped is not None:  # the run's cache has views: average the mirror's probabilities
                flipped = np.asarray(res.flipped, dtype=np.float32)
                proba = (proba + M.full_proba(head.predict_proba(flipped), head.classes_, len(class_names))) / 2
            k = min(top_k, len(class_names))
            order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
            for f, row, idx in zip(res.ok, proba, order):
                top[_key(f)] = [(class_names[i], float(row[i])) for i in idx]
    predictions = []
    for f, _ in items:
        key = _key(f)
        if key in top:
            predictions.append(Prediction(f, top[key]))
        else:
            predictions.append(Prediction(f, error=reasons.get(key, "not predicted")))
    return PredictResult(predictions)
