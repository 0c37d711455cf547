"""An approximate nearest-neighbour index beside a cache (usearch HNSW), for collections too large to scan.

The index lives in a folder beside the cache, ``CACHE.h5.index/``: ``index.usearch`` (the graph
and the normalised vectors in float16), ``mean.npy`` (the centre of the features) and
``index.json`` (the cache's fingerprint digest and row count, the settings). An index whose cache
changed (another fingerprint, more or fewer rows) is never used: `open_index` builds it again.
It is written under a temporary name and renamed into place whole, so a killed build leaves no
half index. Needs ``pip install -e '.[index]'`` (usearch).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from headstart.errors import SimilarError

log = logging.getLogger(__name__)

INDEX_VERSION = 1
CONNECTIVITY = 16  # HNSW graph degree (usearch's default); recall@10 measured by bench/bench_similar.py
EXPANSION_ADD = 64
EXPANSION_SEARCH = 512  # recall@10 0.954 at 1M x 256 (0.892 at 128), 3.7 ms a query: bench/bench_similar.py


def normalise(block: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows centred on ``mean`` and scaled to unit length (float32), for cosine by dot product."""
    x = block.astype(np.float32, copy=False) - mean
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def picture_rows(cache) -> np.ndarray:
    """The first row of each picture (its original, not a mirrored view)."""
    return np.arange(len(cache)) if cache.views is None else np.flatnonzero(cache.views == 0)


def feature_mean(cache, block_rows: int = 8192) -> np.ndarray:
    """The mean of every row's features, in one pass over the cache."""
    total = np.zeros(cache.dim, np.float64)
    for _, block in cache.iter_chunks(rows=block_rows, dtype=np.float32):
        total += block.sum(axis=0, dtype=np.float64)
    return (total / max(1, len(cache))).astype(np.float32)


def index_folder(cache_path: str | os.PathLike) -> Path:
    path = Path(cache_path)
    return path.with_name(path.name + ".index")


def _usearch():
    try:
        from usearch.index import Index
    except ImportError:
        raise SimilarError(
            "Expected usearch for --index. Received: not installed; pip install -e '.[index]' in the clone."
        ) from None
    return Index


def _meta(cache) -> dict:
    return {
        "version": INDEX_VERSION,
        "fingerprint_digest": cache.fingerprint_digest,
        "rows": len(cache),
        "dim": cache.dim,
        "metric": "cos",
        "connectivity": CONNECTIVITY,
    }


class ApproximateSearch:
    """The same interface as `headstart.similar.ExactSearch`, answered by an HNSW index."""

    def __init__(self, cache, index, mean: np.ndarray):
        self.cache = cache
        self.index = index
        self.mean = mean

    def vector(self, row: int) -> np.ndarray:
        return normalise(self.cache.read(row, row + 1), self.mean)[0]

    def normalise(self, features: np.ndarray) -> np.ndarray:
        return normalise(np.atleast_2d(features), self.mean)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        want = k if allowed is None else min(len(self.cache), 4 * k)  # filtered after the search
        matches = self.index.search(np.asarray(queries, np.float32), want)
        out = []
        for i in range(len(queries)):
            m = matches[i] if len(queries) > 1 else matches
            hits = [(int(key), float(1 - d)) for key, d in zip(m.keys, m.distances)]
            if allowed is not None:
                hits = [(r, s) for r, s in hits if allowed[r]]
            out.append(hits[:k])
        return out


def build_index(cache) -> Path:
    """Build the index of an open cache into its folder (replacing an outdated one whole)."""
    Index = _usearch()
    mean, rows_kept = feature_mean(cache), picture_rows(cache)
    index = Index(ndim=cache.dim, metric="cos", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
    index.expansion_search = EXPANSION_SEARCH
    keep = np.zeros(len(cache), bool)
    keep[rows_kept] = True
    for start, block in cache.iter_chunks(dtype=np.float32):
        rows = np.flatnonzero(keep[start : start + len(block)])
        if len(rows):
            index.add(rows + start, normalise(block[rows], mean))
    final = index_folder(cache.path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        index.save(str(tmp / "index.usearch"))
        np.save(tmp / "mean.npy", mean, allow_pickle=False)
        (tmp / "index.json").write_text(json.dumps(_meta(cache), indent=2) + "\n")
        if final.exists():
            if not (final / "index.json").is_file():
                raise SimilarError(f"Expected {final} to be an index headstart wrote. Received: other files.")
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built the index of %s (%d pictures) in %s", cache.path, len(rows_kept), final)
    return final


def open_index(cache, rebuild: bool = True) -> ApproximateSearch:
    """The index of an open cache; built (or built again, when the cache changed) if ``rebuild``."""
    Index = _usearch()
    folder = index_folder(cache.path)
    meta = None
    try:
        meta = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        pass
    if meta != _meta(cache):
        if not rebuild:
            raise SimilarError(f"Expected an index of {cache.path} as it is now. Received: {folder} is outdated.")
        if meta is not None:
            log.warning("the index %s is of an older state of %s: building it again", folder, cache.path)
        build_index(cache)
    index = Index.restore(str(folder / "index.usearch"))
    if index is None or index.ndim != cache.dim:
        raise SimilarError(f"Expected a usearch index of {cache.dim}-d vectors in {folder}. Received: a damaged one.")
    index.expansion_search = EXPANSION_SEARCH
    mean = np.load(folder / "mean.npy", allow_pickle=False)
    if mean.shape != (cache.dim,):
        raise SimilarError(f"Expected the features' mean in {folder / 'mean.npy'}. Received: shape {mean.shape}.")
    return ApproximateSearch(cache, index, mean.astype(np.float32))
