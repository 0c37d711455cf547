"""The rows of a split ready for a head: train, validation and test features in memory, or streamed from the cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadError, RunError, SplitError
from headstart.heads.sources import ArraySource, CacheSource, check_finite
from headstart.heads.split import (
    CALIBRATION_FOLDS,
    CALIBRATION_ROWS,
    SPLITS,
    SplitSpec,
    assign,
    calibration_folds,
    carve_calibration,
    check_trainable,
    split_counts,
)

log = logging.getLogger(__name__)


def _memory_budget() -> int:
    """Bytes of features we allow ourselves to hold: a quarter of the available RAM (else 2 GB)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return 2 << 30
    return int(psutil.virtual_memory().available // 4)


def _load_splits(cache, codes: np.ndarray, n_splits: int = len(SPLITS)) -> list[np.ndarray]:
    """The features of each split (code 0 to ``n_splits - 1``) in memory, at the cache's dtype,
    in one pass over the file."""
    arrays = [np.empty((int((codes == k).sum()), cache.dim), dtype=cache.dtype) for k in range(n_splits)]
    filled = [0] * n_splits
    for start, block in cache.iter_chunks(dtype=cache.dtype):
        check_finite(block, cache, first_row=start)
        c = codes[start : start + len(block)]
        for k in range(n_splits):
            sel = block[c == k]
            arrays[k][filled[k] : filled[k] + len(sel)] = sel
            filled[k] += len(sel)
    return arrays


@dataclass
class Data:
    """A cache split and ready to fit on: label codes and a row source per split."""

    cache_path: Path
    class_names: list[str]
    spec: SplitSpec
    indices: dict[str, np.ndarray]
    counts: dict[str, dict[str, int]]
    sources: dict[str, Any]
    streamed: bool
    cache_info: dict[str, Any]
    paths: dict[str, list[str]] | None = None  # per split, when the cache has views to average
    excluded: dict[str, Any] | None = None  # what --exclude-list left out (recorded in run.json)
    calibration: dict[str, Any] | None = None  # which rows calibrate, and how chosen (recorded in run.json)
    folds: np.ndarray | None = None  # with cross-fitting: the calibration fold of each training row

    def labels(self, name: str) -> np.ndarray:
        return self.sources[name].labels


def prepare(
    cache, spec: SplitSpec, stream: bool | None, exclude=None, calibration: float | None = None, crossfit: bool = False
) -> Data:
    """Split an open cache and make a row source per split (in memory, or streamed by size).
    ``exclude``: an `ExcludeList` whose pictures are in no split. ``calibration``: the share of
    the training rows set aside as a fourth split, ``calib`` (`carve_calibration`), that no head
    trains, stops early or chooses on: the rows a temperature is fitted on. ``crossfit``: instead,
    every training row gets a calibration fold (`calibration_folds`)."""
    n = len(cache)
    if n == 0:
        raise RunError(f"Expected a cache with extracted pictures. Received: {cache.path} (0 rows); run extract first.")
    if not cache.complete:
        log.warning("%s: extraction did not finish; training on the %d rows committed so far", cache.path, n)
    codes = assign(cache.paths, spec)
    excluded = None
    if exclude is not None:
        left_out = np.array([p in exclude.paths for p in cache.paths], dtype=bool)
        codes[left_out] = -1  # in no split
        excluded = exclude.record([p for p, out in zip(cache.paths, left_out) if out])
        log.info("left out %d pictures listed in %s", int(left_out.sum()), exclude.file)
    names = SPLITS
    carved = folds = None
    if crossfit:
        train_paths = [cache.paths[i] for i in np.flatnonzero(codes == SPLITS.index("train"))]
        folds = calibration_folds(train_paths, CALIBRATION_FOLDS, spec.seed)
        carved = {
            "fitted_on": "crossfit: every training row, scored by a head fitted on the other folds "
            "(its early stopping and choice of C or k on the validation split, as the saved head's)",
            "folds": CALIBRATION_FOLDS,
            "seed": spec.seed,
            "chosen_by": "sha256('calibration-fold', seed, relative path) times the folds",
            "rows": len(train_paths),
        }
    elif calibration:
        codes = carve_calibration(cache.paths, codes, calibration, spec.seed)
        names = (*SPLITS, "calib")
    indices = {name: np.flatnonzero(codes == k) for k, name in enumerate(names)}
    counts = split_counts(cache.labels, indices, cache.class_names)
    check_trainable(counts, cache.counts())
    if calibration:
        if not len(indices["calib"]):
            raise SplitError(
                f"Expected training pictures to set aside for calibration. Received: none of the "
                f"{len(indices['train'])} training pictures fell in the {calibration:g} share; raise "
                "--calibration-fraction or the training share of --split, or leave out --calibrate."
            )
        carved = {
            "fitted_on": "calib: a share of the training rows that training, early stopping and "
            "the choice of C or k never see",
            "fraction_of_train": float(calibration),
            "seed": spec.seed,
            "chosen_by": "sha256('calibration', seed, relative path) below the fraction",
            "rows": int(len(indices["calib"])),
        }
    if sum(1 for v in counts["train"].values() if v) < 2:
        raise SplitError(
            f"Expected pictures of at least two classes. Received: {cache.path} with training pictures of "
            f"{', '.join(c for c, v in counts['train'].items() if v) or 'no class'} only."
        )
    need = n * cache.dim * cache.dtype.itemsize
    streamed = need > _memory_budget() if stream is None else bool(stream)
    if streamed:
        log.info("streaming %s from disk (%.0f MB of features)", cache.path, need / 1e6)
        sources = {name: CacheSource(cache, idx) for name, idx in indices.items()}
        val = sources["val"]
        if len(val) and len(val) * cache.dim * 4 < _memory_budget() // 2:
            # Early stopping scores the validation rows every epoch: keep them in memory if they fit.
            blocks = [val.read_block(b) for b in range(len(val.blocks))]
            sources["val"] = ArraySource(np.concatenate(blocks), val.labels)
    else:
        arrays = _load_splits(cache, codes, len(names))
        sources = {name: ArraySource(arrays[k], cache.labels[indices[name]]) for k, name in enumerate(names)}
    return Data(
        paths=None if cache.views is None else {k: [cache.paths[i] for i in v] for k, v in indices.items()},
        cache_path=cache.path.resolve(),
        class_names=list(cache.class_names),
        spec=spec,
        indices=indices,
        counts=counts,
        sources=sources,
        streamed=streamed,
        cache_info={
            "path": str(cache.path.resolve()),
            "fingerprint": cache.fingerprint,
            "fingerprint_digest": cache.fingerprint_digest,
            "root": cache.root,
            "weights_path": cache.weights_path,
            "rows": n,
            "dim": cache.dim,
            "dtype": str(cache.dtype),
            "complete": cache.complete,
        },
        excluded=excluded,
        calibration=carved,
        folds=folds,
    )


def calibration_rows_args(calibrate: str | None, rows: str, fraction: float) -> tuple[float | None, bool]:
    """``prepare``'s ``(calibration, crossfit)`` for the options ``--calibrate``,
    ``--calibration-rows`` and ``--calibration-fraction``."""
    if rows not in CALIBRATION_ROWS:
        raise HeadError(f"Expected --calibration-rows among {', '.join(CALIBRATION_ROWS)}. Received: {rows!r}.")
    if not calibrate:
        return None, False
    return (None, True) if rows == "crossfit" else (fraction, False)
