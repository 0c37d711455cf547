"""The audit's view of a cache: reduced feature rows and their nearest neighbours.

Nothing here holds the N x D features: every pass reads the cache a block of rows at a time
(`CacheReader.iter_chunks`, ~8 MiB). What is kept is O(N): the rows projected on at most
``dims`` principal components (N x 256 float32 is 25 MB for 25,000 pictures) and, per row,
its ``k`` nearest neighbours.

- `reduce`, when D > ``dims``, projects the rows on their top right singular vectors, found by
  a randomized range finder streamed over the blocks (Halko, Martinsson and Tropp 2011, as
  `sklearn.utils.extmath.randomized_svd` does in memory): a few passes of N x D x ~266
  multiply-adds instead of the N x D x D of a covariance matrix.
- `neighbours` compares every pair of reduced rows, a block of query rows against all rows at a
  time (a block x N tile): each row's highest similarities and the candidate duplicate pairs.
- `exact_similarity` gives the cosine similarity of chosen pairs on the full centred features
  (used to confirm near duplicates found in the reduced space).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from headstart.cache.reader import CacheReader
from headstart.errors import AuditError

log = logging.getLogger(__name__)

DIMS = 256
"""Principal components kept for the neighbour search (features with fewer dimensions are kept whole)."""
POWER_ITERATIONS = 1
"""Enough here: the search only proposes pairs, which the full rows then confirm."""
QUERY_ROWS = 256


@dataclass
class Space:
    """Reduced rows of a cache, and two L2-normalized versions of them for cosine similarity.

    ``coords`` (N, r) are the rows projected on their top ``r`` right singular vectors
    (``components``; None when the rows are kept whole, then ``coords`` are the rows themselves).
    Cosine similarity of the rows as they are tells a picture unlike any other; after subtracting
    the mean row (centred) it tells a copy from another photo of the same kind, since every ReLU
    feature row shares much of the mean.
    """

    mean: np.ndarray  # (D,) float64, the mean feature row
    components: np.ndarray | None  # (r, D) float32
    coords: np.ndarray  # (N, r) float32
    mean_coords: np.ndarray  # (r,) the mean row in the same coordinates
    explained: float  # share of the sum of squares the components keep (1.0 when whole)
    constant: bool = False  # every row is the same (nothing tells one picture from another)

    @property
    def unit(self) -> np.ndarray:
        return _normalize(self.coords)

    @property
    def centred_unit(self) -> np.ndarray:
        return _normalize(self.coords - self.mean_coords)


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
    reduced = d > dims
    k = min(d, n, dims + 10)
    test = np.random.default_rng(seed).standard_normal((d, k)).astype(np.float32) if reduced else None
    y = np.empty((n, k), dtype=np.float32) if reduced else None
    for start, x in cache.iter_chunks(block_rows):  # one pass: checks, mean, energy, X @ random test matrix
        if not np.isfinite(x).all():
            bad = start + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise AuditError(
                f"Expected finite feature values in {cache.path}. Received: NaN or infinity in row {bad} "
                f"({cache.paths[bad]}); extract the cache again with --overwrite."
            )
        total += x.sum(axis=0, dtype=np.float64)
        energy += float(np.einsum("ij,ij->", x, x, dtype=np.float64))
        if reduced:
            y[start : start + len(x)] = x @ test
    mean = total / max(n, 1)
    constant = energy - n * float(mean @ mean) <= 1e-9 * max(energy, 1e-30)
    if constant:
        log.warning("every row of %s is the same: nothing to tell the pictures apart", cache.path)
    if not reduced:
        coords = np.empty((n, d), dtype=np.float32)
        for start, x in cache.iter_chunks(block_rows):
            coords[start : start + len(x)] = x
        return _space(mean, None, coords, 1.0, constant)
    if energy == 0:  # all rows zero: no direction at all; one zero coordinate keeps the shapes usable
        return _space(mean, np.zeros((1, d), dtype=np.float32), np.zeros((n, 1), dtype=np.float32), 1.0, True)

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

    q = _orthonormal(y)
    del y
    for _ in range(POWER_ITERATIONS):
        q = _orthonormal(times(_orthonormal(transposed_times(q))))
    b = transposed_times(q).T.astype(np.float64)  # Q^T X, k x D; its SVD from the k x k Gram matrix
    s2, u = _eigh(b @ b.T)
    order = np.argsort(s2)[::-1]
    s2, u = np.clip(s2[order], 0, None), u[:, order]
    r = int(min(dims, (s2 > s2[0] * 1e-12).sum()))
    s = np.sqrt(s2[:r])
    components = ((u[:, :r].T @ b) / s[:, None]).astype(np.float32)
    explained = float((s[:r] ** 2).sum() / energy) if energy > 0 else 1.0
    log.info("reduced %d x %d to %d components (%.1f%% of the sum of squares)", n, d, r, 100 * explained)
    return _space(mean, components, times(components.T), explained, constant)


def _eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`numpy.linalg.eigh` of a small matrix on one BLAS thread: OpenBLAS' threads made a 266 x 266
    eigh take 0.9 s instead of 0.05 s on a busy 2-core machine (bench/bench_audit.py)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return np.linalg.eigh(gram)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``y`` (tall, k columns), from the eigenvectors of the k x k Gram
    matrix, twice (as Cholesky-QR2): LAPACK's QR of a tall matrix was 10x slower here, and this
    also drops directions the rows do not have (a rank below k)."""
    q = y.astype(np.float64)
    for _ in range(2):
        w, v = _eigh(q.T @ q)
        keep = w > w.max() * 1e-12
        q = q @ (v[:, keep] / np.sqrt(w[keep]))
    return q.astype(np.float32)


def _space(
    mean: np.ndarray, components: np.ndarray | None, coords: np.ndarray, explained: float, constant: bool = False
) -> Space:
    mean_coords = (mean if components is None else components.astype(np.float64) @ mean).astype(np.float32)
    return Space(mean, components, coords, mean_coords, explained, constant)


@dataclass
class Neighbours:
    """What one pass over all pairs keeps: O(N) values, and the candidate duplicate pairs."""

    top_sim: np.ndarray  # (N, k) float32: the k highest raw cosine similarities of each row, highest first
    pairs: np.ndarray  # (P, 2) int64, i < j: centred cosine at least the cut
    pair_sim: np.ndarray  # (P,) float32, their centred cosine similarity in the search space
    class_sim: np.ndarray | None = None  # (N, k) float32: the same, among the rows of the row's own class
    nearest: np.ndarray | None = None  # (N,) float32: each row's highest centred similarity to another row


def neighbours(
    space: Space,
    k: int,
    cut: float,
    per_row: int = 10,
    query_rows: int = QUERY_ROWS,
    labels: np.ndarray | None = None,
) -> Neighbours:
    """One pass over every pair of rows, ``query_rows`` x N at a time (one matrix product a tile).

    Both similarities come from the same tile of raw dot products G of the reduced rows: raw cosine
    G / (|x| |y|), and centred cosine (G - x.m - y.m + m.m) / (|x - m| |y - m|), m the mean row. A
    row keeps its ``k`` highest raw similarities (outlier scores), with ``labels`` also its ``k``
    highest among the rows of its class, its highest centred similarity (the near-duplicate
    threshold comes from their distribution) and at most ``per_row`` partners whose centred
    similarity is at least ``cut`` (duplicate candidates). A row is not its own neighbour.
    """
    c = space.coords
    n = len(c)
    k = max(0, min(k, n - 1))
    order = None
    segments = [(0, n)]
    if labels is not None:  # rows of a class next to each other: its columns are one slice of a tile
        order = np.argsort(labels, kind="stable")
        c = c[order]
        edges = np.flatnonzero(np.diff(labels[order])) + 1
        segments = list(zip([0, *edges.tolist()], [*edges.tolist(), n]))
    m = space.mean_coords.astype(np.float32)
    norm = np.linalg.norm(c, axis=1)
    inv = (1.0 / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    dot_m = (c @ m).astype(np.float32)
    cnorm = np.sqrt(np.clip(norm.astype(np.float64) ** 2 - 2 * dot_m + float(m @ m), 0, None))
    cinv = (1.0 / np.where(cnorm > 1e-12, cnorm, np.inf)).astype(np.float32)
    top = np.zeros((n, k), dtype=np.float32)
    by_class = np.full((n, k), -np.inf, dtype=np.float32) if labels is not None else None
    nearest = np.full(n, -np.inf, dtype=np.float32)
    pair_rows, pair_cols, pair_vals = [], [], []
    tiles = [(start, min(hi, start + query_rows), lo, hi) for lo, hi in segments for start in range(lo, hi, query_rows)]
    for start, stop, lo, hi in tiles:  # a tile never spans two classes
        b = np.arange(stop - start)
        g = c[start:stop] @ c.T  # (b, N) dot products
        centred = g - dot_m[start:stop, None]
        centred -= dot_m[None, :]
        centred += float(m @ m)
        centred *= cinv[start:stop, None]
        centred *= cinv[None, :]
        g *= inv[start:stop, None]
        g *= inv[None, :]
        g[b, b + start] = -np.inf
        centred[b, b + start] = -np.inf
        if k:
            top[start:stop] = _top_k(g, k)
            if by_class is not None:
                kc = min(k, hi - lo)
                by_class[start:stop, :kc] = _top_k(g[:, lo:hi], kc)
        if n > 1:
            nearest[start:stop] = centred.max(axis=1)
        rows, cols = np.nonzero(centred >= cut)
        if len(rows):
            vals = centred[rows, cols]
            first_by_row = np.lexsort((-vals, rows))  # by row, most similar first
            rows, cols, vals = rows[first_by_row], cols[first_by_row], vals[first_by_row]
            first = np.searchsorted(rows, rows, side="left")
            keep = (np.arange(len(rows)) - first) < per_row
            pair_rows.append(rows[keep] + start)
            pair_cols.append(cols[keep])
            pair_vals.append(vals[keep])
    if pair_rows:
        rows, cols, vals = np.concatenate(pair_rows), np.concatenate(pair_cols), np.concatenate(pair_vals)
        if order is not None:
            rows, cols = order[rows], order[cols]
        pairs = np.stack([np.minimum(rows, cols), np.maximum(rows, cols)], axis=1).astype(np.int64)
        pairs, first = np.unique(pairs, axis=0, return_index=True)
        vals = vals[first]
    else:
        pairs, vals = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    if order is not None:  # back to the rows' own order
        top[order], nearest[order], by_class[order] = top.copy(), nearest.copy(), by_class.copy()
    return Neighbours(top, pairs, vals.astype(np.float32), by_class, nearest)


def _top_k(g: np.ndarray, k: int, width: int = 64) -> np.ndarray:
    """The ``k`` largest values of each row of ``g``, largest first.

    Cheaper than `numpy.partition` over whole rows: the row's maximum of each run of ``width``
    columns is one fast reduction, and the ``k`` largest values lie in the ``k`` runs with the
    largest maxima (and the columns past the last whole run), a few hundred values to partition.
    """
    b, n = g.shape
    whole = n // width * width
    if whole < width * (k + 1):
        return -np.sort(-np.partition(g, n - k, axis=1)[:, n - k :], axis=1)
    runs = g[:, :whole].reshape(b, whole // width, width)
    best = np.argpartition(runs.max(axis=2), -k, axis=1)[:, -k:]  # (b, k) runs
    pool = np.take_along_axis(runs, best[:, :, None], axis=1).reshape(b, k * width)
    pool = np.concatenate([pool, g[:, whole:]], axis=1)
    return -np.sort(-np.partition(pool, pool.shape[1] - k, axis=1)[:, -k:], axis=1)


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
