"""The audit's view of a cache: reduced feature rows and their nearest neighbours.

Nothing here holds the N x D features: every pass reads the cache a block of rows at a time
(`CacheReader.iter_chunks`, ~8 MiB). What is kept is O(N): the rows projected on at most
``dims`` principal components (N x 256 float32 is 25 MB for 25,000 pictures) and, per row,
its ``k`` nearest neighbours.

- `reduce`, when D > ``dims``, projects the rows on their top right singular vectors, found by
  a randomized range finder streamed over the blocks (Halko, Martinsson and Tropp 2011, as
  `sklearn.utils.extmath.randomized_svd` does in memory): a few passes of N x D x ~266
  multiply-adds instead of the N x D x D of a covariance matrix.
- `nearest` finds each row's ``k`` most similar rows by cosine similarity of normalized reduced
  rows, a block of query rows against all rows at a time (a block x N similarity tile).
- `exact_similarity` gives the cosine similarity of chosen pairs on the full centred features
  (used to confirm near duplicates found in the reduced space).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from headstart.cache.store import CacheReader
from headstart.errors import AuditError

log = logging.getLogger(__name__)

DIMS = 256
"""Principal components kept for the neighbour search (features with fewer dimensions are kept whole)."""
POWER_ITERATIONS = 3
QUERY_ROWS = 1024


@dataclass
class Space:
    """Reduced rows of a cache, and two L2-normalized versions of them for cosine similarity.

    ``coords`` (N, r) are the rows projected on their top ``r`` right singular vectors
    (``components``; None when the rows are kept whole, then ``coords`` are the rows themselves).
    ``unit`` normalizes them as they are (cosine of the raw features: what tells a picture unlike
    any other), ``centred_unit`` after subtracting the mean row (cosine of centred features: what
    tells a copy from another photo of the same kind, since every ReLU feature row shares the mean).
    """

    mean: np.ndarray  # (D,) float64, the mean feature row
    components: np.ndarray | None  # (r, D) float32
    coords: np.ndarray  # (N, r) float32
    unit: np.ndarray  # (N, r) float32
    centred_unit: np.ndarray  # (N, r) float32
    explained: float  # share of the sum of squares the components keep (1.0 when whole)


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def reduce(cache: CacheReader, dims: int = DIMS, seed: int = 0, block_rows: int | None = None) -> Space:
    """Project the cached rows on their top ``dims`` right singular vectors (all of them when D <= dims).

    Raises `AuditError` if a row holds NaN or infinity.
    """
    n, d = len(cache), cache.dim
    total = np.zeros(d, dtype=np.float64)
    energy = 0.0
    for start, x in cache.iter_chunks(block_rows):
        if not np.isfinite(x).all():
            bad = start + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise AuditError(
                f"Expected finite feature values in {cache.path}. Received: NaN or infinity in row {bad} "
                f"({cache.paths[bad]}); extract the cache again with --overwrite."
            )
        total += x.sum(axis=0, dtype=np.float64)
        energy += float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    mean = total / max(n, 1)
    if d <= dims:
        coords = np.empty((n, d), dtype=np.float32)
        for start, x in cache.iter_chunks(block_rows):
            coords[start : start + len(x)] = x
        return _space(mean, None, coords, 1.0)

    rng = np.random.default_rng(seed)
    k = min(d, n, dims + 10)

    def times(b: np.ndarray) -> np.ndarray:  # X @ b, N x k
        out = np.empty((n, b.shape[1]), dtype=np.float32)
        for start, x in cache.iter_chunks(block_rows):
            out[start : start + len(x)] = x @ b
        return out

    def transposed_times(q: np.ndarray) -> np.ndarray:  # X.T @ q, D x k
        out = np.zeros((d, q.shape[1]), dtype=np.float64)
        for start, x in cache.iter_chunks(block_rows):
            out += x.T @ q[start : start + len(x)]
        return out.astype(np.float32)

    q, _ = np.linalg.qr(times(rng.standard_normal((d, k)).astype(np.float32)))
    for _ in range(POWER_ITERATIONS):
        w, _ = np.linalg.qr(transposed_times(q))
        q, _ = np.linalg.qr(times(w))
    _, s, vt = np.linalg.svd(transposed_times(q).T, full_matrices=False)  # of Q^T X, k x D
    r = min(dims, len(s))
    components = vt[:r].astype(np.float32)
    explained = float((s[:r] ** 2).sum() / energy) if energy > 0 else 1.0
    log.info("reduced %d x %d to %d components (%.1f%% of the sum of squares)", n, d, r, 100 * explained)
    return _space(mean, components, times(components.T), explained)


def _space(mean: np.ndarray, components: np.ndarray | None, coords: np.ndarray, explained: float) -> Space:
    mean_coords = (mean if components is None else components.astype(np.float64) @ mean).astype(np.float32)
    return Space(mean, components, coords, _normalize(coords), _normalize(coords - mean_coords), explained)


def nearest(unit: np.ndarray, k: int, query_rows: int = QUERY_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows most similar to each row (itself excluded): indices (N, k) int64 and cosine
    similarities (N, k) float32, most similar first. Works a ``query_rows`` x N tile at a time."""
    n = len(unit)
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    sim = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return idx, sim
    for start in range(0, n, query_rows):
        stop = min(n, start + query_rows)
        tile = unit[start:stop] @ unit.T  # (b, N)
        tile[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        part = np.argpartition(-tile, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(tile, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def exact_similarity(cache: CacheReader, mean: np.ndarray, pairs: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Cosine similarity of the centred full feature rows of each pair ``(i, j)`` in ``pairs`` (P, 2),
    reading at most ``2 * chunk`` rows at a time."""
    out = np.empty(len(pairs), dtype=np.float32)
    mean32 = mean.astype(np.float32)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        rows, inverse = np.unique(part.ravel(), return_inverse=True)
        x = _normalize(cache.take(rows) - mean32)
        inverse = inverse.reshape(part.shape)
        out[start : start + len(part)] = np.einsum("ij,ij->i", x[inverse[:, 0]], x[inverse[:, 1]])
    return out
