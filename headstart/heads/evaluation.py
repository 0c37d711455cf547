"""Scoring a saved run on cached features: `evaluate` (its test split, or another cache) and `misclassified`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.cache import describe_diff, diff_settings, open_cache
from headstart.errors import CacheMismatchError, RunError
from headstart.heads import metrics as M
from headstart.heads.run_reader import load_run
from headstart.heads.sources import CacheSource
from headstart.heads.split import SPLITS, assign
from headstart.heads.training import predict_split
from headstart.heads.views import per_picture

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    run_dir: Path
    cache_path: Path
    scope: str  # "test split" or "whole cache"
    metrics: dict[str, Any]
    class_names: list[str]
    excluded: int = 0  # rows of the run's own training / validation pictures left out


@dataclass(frozen=True)
class Mistake:
    """A misclassified test picture."""

    path: str  # relative to the cache root
    file: Path  # where it is on disk (cache root / path)
    true: str
    predicted: str
    probability: float  # of the predicted class
    loss: float  # -log p(true class)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "file": str(self.file)}


@dataclass(frozen=True)
class MisclassifiedResult:
    mistakes: list[Mistake]
    n_test: int
    n_wrong: int
    montage: Path | None
    root: Path | None = None  # the cache's root: the pictures' paths are relative to it


def check_fingerprint(info: Mapping[str, Any], cache) -> None:
    diff = diff_settings(info["cache"]["fingerprint"], cache.fingerprint)
    if diff:
        detail = describe_diff(diff, labels=("run", "cache"))
        raise CacheMismatchError(
            f"Expected a cache extracted with the run's settings. Received: {cache.path}, which differs in "
            f"{detail}. Extract the pictures again with the run's settings, or train a head on this cache."
        )
    if cache.dim != info["cache"]["dim"]:
        raise CacheMismatchError(
            f"Expected {info['cache']['dim']} features a picture, as the run's cache. Received: {cache.path} with {cache.dim}."
        )


def _label_map(run_classes: Sequence[str], cache) -> np.ndarray:
    """Cache label code → run class index; the cache's classes must be among the run's."""
    unknown = [c for c in cache.class_names if c not in run_classes]
    if unknown:
        raise RunError(
            f"Expected a cache whose classes are among the run's ({', '.join(run_classes)}). "
            f"Received: {cache.path} with {', '.join(unknown)}."
        )
    return np.array([list(run_classes).index(c) for c in cache.class_names], dtype=np.int64)


def _run_cache_path(info: Mapping[str, Any], run_dir: Path) -> Path:
    path = Path(info["cache"]["path"])
    if not path.exists():
        raise RunError(
            f"Expected the run's cache at {path}. Received: no such file. "
            f"Pass the cache explicitly: headstart evaluate {run_dir} CACHE."
        )
    return path


def _test_rows(info: Mapping[str, Any], cache) -> np.ndarray:
    test = assign(cache.paths, info["split_spec"]) == SPLITS.index("test")
    excluded = info.get("excluded")
    if excluded is not None:  # pictures the run left out (--exclude-list) stay out of its test split
        paths = excluded.get("paths") if isinstance(excluded, dict) else None
        if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
            raise RunError(
                f"Expected excluded.paths in the run's run.json as a list of paths. Received: {paths!r:.80}."
            )
        test &= ~np.isin(np.array(cache.paths, dtype=object), np.array(paths, dtype=object))
    return np.flatnonzero(test)


def evaluate(run_dir: str | os.PathLike, cache_path: str | os.PathLike | None = None) -> EvaluateResult:
    """Metrics of a run on its test split, or on the whole of another cache.

    The cache must have the run's fingerprint (`CacheMismatchError` names the differing
    settings). Another cache of the same dataset folder (same root) would hold the run's own
    training pictures: those are left out, and ``excluded`` says how many.
    """
    run_dir = Path(run_dir)
    info, head = load_run(run_dir)
    own = cache_path is None
    path = _run_cache_path(info, run_dir) if own else Path(cache_path)
    if not own and path.exists() and Path(info["cache"]["path"]).exists():
        own = os.path.samefile(path, info["cache"]["path"])
    class_names = list(info["class_names"])
    with open_cache(path) as cache:
        check_fingerprint(info, cache)
        mapping = _label_map(class_names, cache)
        excluded = 0
        if own:
            rows, scope = _test_rows(info, cache), "test split"
        else:
            rows, scope = np.arange(len(cache)), "whole cache"
            if cache.root and cache.root == info["cache"].get("root"):
                keep = _test_rows(info, cache)
                excluded = len(rows) - len(keep)
                rows = keep
                if excluded:
                    log.warning("left out %d pictures of the run's own training and validation splits", excluded)
        source = CacheSource(cache, rows, labels=mapping[cache.labels[rows]])
        proba, y = predict_split(head, source, len(class_names)), source.labels
        if cache.views is not None:  # one score per picture: its views averaged
            proba, y, _ = per_picture(proba, y, [cache.paths[i] for i in rows])
        metrics = M.split_metrics(y, proba, class_names)
    return EvaluateResult(run_dir, path, scope, metrics, class_names, excluded)


def misclassified(
    run_dir: str | os.PathLike, n: int = 20, montage: str | os.PathLike | None = None
) -> MisclassifiedResult:
    """The ``n`` misclassified test pictures of highest loss; ``montage`` draws them in a grid."""
    if n < 1:
        raise RunError(f"Expected --top/-n of 1 or more. Received: {n}.")
    if montage is not None:
        from headstart.heads.plots import check_image_path

        montage = check_image_path(Path(montage), "--montage")
    run_dir = Path(run_dir)
    info, head = load_run(run_dir)
    class_names = list(info["class_names"])
    with open_cache(_run_cache_path(info, run_dir)) as cache:
        check_fingerprint(info, cache)
        mapping = _label_map(class_names, cache)
        rows = _test_rows(info, cache)
        y = mapping[cache.labels[rows]]
        proba = predict_split(head, CacheSource(cache, rows, labels=y), len(class_names))
        paths = [cache.paths[i] for i in rows]
        if cache.views is not None:  # one line per picture: its views averaged
            proba, y, first = per_picture(proba, y, paths)
            rows, paths = rows[first], [paths[i] for i in first]
        root = Path(cache.root or ".")
    pred = proba.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    loss = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)) if len(rows) else np.zeros(0)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-loss[wrong], kind="stable")]
    mistakes = [
        Mistake(
            path=paths[i],
            file=root / paths[i],
            true=class_names[y[i]],
            predicted=class_names[pred[i]],
            probability=float(proba[i, pred[i]]),
            loss=float(loss[i]),
        )
        for i in wrong[:n]
    ]
    drawn = None
    if montage is not None and mistakes:
        from headstart.heads import plots

        drawn = plots.plot_montage([m.to_dict() for m in mistakes], montage)
    return MisclassifiedResult(mistakes, n_test=len(rows), n_wrong=len(wrong), montage=drawn, root=root)
