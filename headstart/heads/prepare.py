"""The rows of a split ready for a head: train, validation and test features in memory, or streamed from the cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import RunError, SplitError
from headstart.heads.sources import ArraySource, CacheSource, check_finite
from headstart.heads.split import SPLITS, SplitSpec, assign, check_trainable, split_counts

log = logging.getLogger(__name__)


def _memory_budget() -> int:
    """Bytes of features we allow ourselves to hold: a quarter of the available RAM (else 2 GB)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return 2 << 30
    return int(psutil.virtual_memory().available // 4)


def _load_splits(cache, codes: np.ndarray) -> list[np.ndarray]:
    """The features of each split in memory, at the cache's dtype, in one pass over the file."""
    arrays = [np.empty((int((codes == k).sum()), cache.dim), dtype=cache.dtype) for k in range(len(SPLITS))]
    filled = [0] * len(SPLITS)
    for start, block in cache.iter_chunks(dtype=cache.dtype):
        check_finite(block, cache, first_row=start)
        c = codes[start : start + len(block)]
        for k in range(len(SPLITS)):
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

    def labels(self, name: str) -> np.ndarray:
        return self.sources[name].labels


def prepare(cache, spec: SplitSpec, stream: bool | None, exclude=None) -> Data:
    """Split an open cache and make a row source per split (in memory, or streamed by size).
    ``exclude``: an `ExcludeList` whose pictures are in no split."""
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
    indices = {name: np.flatnonzero(codes == k) for k, name in enumerate(SPLITS)}
    counts = split_counts(cache.labels, indices, cache.class_names)
    check_trainable(counts, cache.counts())
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
        arrays = _load_splits(cache, codes)
        sources = {name: ArraySource(arrays[k], cache.labels[indices[name]]) for k, name in enumerate(SPLITS)}
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
    )
