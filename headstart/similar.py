"""Similarity search on a cache: the nearest pictures to a query by centred cosine of cached features.

A query is a picture of the cache (named by its path relative to the cache's root, or by its full
path) or a new picture file, embedded on the fly with the cache's own settings (backbone, layer,
preprocessing, resize, weights file). Features are centred on the cache's mean before the cosine:
the ReLU features of ImageNet backbones are all positive, so raw cosines bunch up near 1.

Exact search holds the normalised features in memory when they fit in a quarter of the available
RAM (25,000 x 4,096 float32 is 400 MB) and reads the cache in blocks otherwise, so memory stays
bounded for a million rows. ``headstart.similar_index`` builds an approximate index for larger
collections.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.cache import open_cache
from headstart.cache.paths import normalize_path
from headstart.errors import SimilarError
from headstart.heads.split import SPLITS, SplitSpec, assign
from headstart.similar_index import feature_mean, normalise, picture_rows

log = logging.getLogger(__name__)

BLOCK_ROWS = 8192


@dataclass(frozen=True)
class Neighbour:
    """One picture found near a query."""

    path: str  # relative to the cache's root
    similarity: float
    label: str
    split: str
    row: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "similarity": round(self.similarity, 6),
            "class": self.label,
            "split": self.split,
            "row": self.row,
        }


@dataclass(frozen=True)
class QueryResult:
    """The neighbours of one query, nearest first; ``source`` says where its features came from."""

    query: str
    source: str  # "cache" (a row of the cache), "file" (embedded now) or "text" (the text tower)
    neighbours: list[Neighbour] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "source": self.source, "neighbours": [n.to_dict() for n in self.neighbours]}


def _memory_budget() -> int:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return 2 << 30
    return int(psutil.virtual_memory().available // 4)


class ExactSearch:
    """Centred-cosine search over every row of an open cache (one per picture: views are averaged).

    ``centre=False``: plain cosine, for queries from another tower (a CLIP text embedding is
    compared with the image embeddings as they are, as the model was trained to)."""

    def __init__(self, cache, *, in_memory: bool | None = None, block_rows: int = BLOCK_ROWS, centre: bool = True):
        self.cache = cache
        self.block_rows = block_rows
        n, dim = len(cache), cache.dim
        if n == 0:
            raise SimilarError(f"Expected a cache with extracted pictures. Received: {cache.path} (0 rows).")
        self.rows = picture_rows(cache)
        self.mean = feature_mean(cache, block_rows) if centre else np.zeros(dim, np.float32)
        need = n * dim * 4
        self.in_memory = need <= _memory_budget() if in_memory is None else in_memory
        self.matrix = None
        if self.in_memory:
            self.matrix = np.empty((n, dim), np.float32)
            for start, block in cache.iter_chunks(rows=block_rows, dtype=np.float32):
                self.matrix[start : start + len(block)] = normalise(block, self.mean)
        log.info(
            "similarity search over %d rows of %s (%s)", n, cache.path, "in memory" if self.in_memory else "blocks"
        )

    def vector(self, row: int) -> np.ndarray:
        """The normalised features of a cache row."""
        return normalise(self.cache.read(row, row + 1), self.mean)[0]

    def normalise(self, features: np.ndarray) -> np.ndarray:
        return normalise(np.atleast_2d(features), self.mean)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """For each normalised query row, the ``k`` best (row, similarity) among ``allowed`` rows
        (a boolean mask over the cache's rows; None: every picture), nearest first."""
        mask = np.zeros(len(self.cache), bool)
        mask[self.rows] = True
        if allowed is not None:
            mask &= allowed
        if self.matrix is not None:  # one matrix product over every row: memory-bound, no copies
            sims = queries.astype(np.float32) @ self.matrix.T
            sims[:, ~mask] = -np.inf
            k = min(k, int(mask.sum()))
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k else np.zeros((len(queries), 0), int)
            out = []
            for q_sims, rows in zip(sims, top):
                order = np.lexsort((rows, -q_sims[rows]))
                out.append([(int(rows[i]), float(q_sims[rows[i]])) for i in order])
            return out
        best_rows = np.zeros((len(queries), 0), np.int64)
        best_sims = np.zeros((len(queries), 0), np.float32)
        for start, block in self._blocks():
            keep = np.flatnonzero(mask[start : start + len(block)])
            if not len(keep):
                continue
            sims = queries @ block[keep].T
            rows = np.broadcast_to(keep + start, sims.shape)
            best_rows = np.concatenate([best_rows, rows], axis=1)
            best_sims = np.concatenate([best_sims, sims], axis=1)
            if best_sims.shape[1] > k:
                top = np.argpartition(-best_sims, k - 1, axis=1)[:, :k]
                best_rows = np.take_along_axis(best_rows, top, axis=1)
                best_sims = np.take_along_axis(best_sims, top, axis=1)
        out = []
        for rows, sims in zip(best_rows, best_sims):
            order = np.lexsort((rows, -sims))  # ties: the lower row first, so results are stable
            out.append([(int(rows[i]), float(sims[i])) for i in order])
        return out

    def _blocks(self):
        if self.matrix is not None:
            for start in range(0, len(self.matrix), self.block_rows):
                yield start, self.matrix[start : start + self.block_rows]
        else:
            for start, block in self.cache.iter_chunks(rows=self.block_rows, dtype=np.float32):
                yield start, normalise(block, self.mean)


def _row_of(cache, query: str) -> int | None:
    """The cache row of a query naming one of its pictures (relative, or a full path under its root)."""
    index = getattr(cache, "_similar_path_index", None)
    if index is None:
        index = {}
        views = cache.views
        for i, p in enumerate(cache.paths):
            if views is None or views[i] == 0:
                index.setdefault(p, i)
        cache._similar_path_index = index
    if query in index:
        return index[query]
    try:
        rel = normalize_path(query)
    except Exception:  # noqa: BLE001 - an odd string is simply not a cached path
        rel = None
    if rel in index:
        return index[rel]
    if cache.root:
        try:
            rel = Path(os.path.abspath(query)).relative_to(Path(cache.root)).as_posix()
        except ValueError:
            return None
        return index.get(rel)
    return None


def _allowed_rows(cache, spec: SplitSpec, exclude: Sequence[str], only: Sequence[str]) -> np.ndarray | None:
    for name in (*exclude, *only):
        if name not in SPLITS:
            raise SimilarError(f"Expected a split among {', '.join(SPLITS)}. Received: {name!r}.")
    if not exclude and not only:
        return None
    codes = assign(cache.paths, spec)
    names = np.array(SPLITS)[codes]
    allowed = np.ones(len(cache), bool)
    if only:
        allowed &= np.isin(names, list(only))
    if exclude:
        allowed &= ~np.isin(names, list(exclude))
    return allowed


def similar(
    cache_path: str | os.PathLike,
    queries: Sequence[str],
    *,
    k: int = 10,
    exclude_split: Sequence[str] = (),
    only_split: Sequence[str] = (),
    split: SplitSpec = SplitSpec(),
    weights: str | os.PathLike | None = None,
    keep_self: bool = False,
    index: bool = False,
) -> list[QueryResult]:
    """The ``k`` nearest pictures of ``cache_path`` to each query, by centred cosine.

    A query that names a picture of the cache uses its cached features (and is left out of its own
    results unless ``keep_self``); any other existing file is embedded with the cache's settings
    (``weights``: the weights file, when the cache was extracted from one and it moved).
    ``exclude_split`` / ``only_split`` restrict the pictures searched to splits of ``split``
    (train, val, test), e.g. to look for test pictures that leaked into training. ``index``: answer
    from the approximate index beside the cache (`headstart.similar_index`), built when missing or
    outdated.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SimilarError(f"Expected -k of 1 or more. Received: {k}.")
    if not queries:
        raise SimilarError(
            "Expected at least one query: a picture of the cache, a picture file, or --text. Received: none."
        )
    from headstart.settings.config import check_cache_settings

    check_cache_settings(cache_path)
    with open_cache(cache_path, require_finite=True) as cache:
        allowed = _allowed_rows(cache, split, exclude_split, only_split)
        if index:
            from headstart.similar_index import open_index

            search = open_index(cache)
        else:
            search = ExactSearch(cache)
        rows = {q: _row_of(cache, q) for q in queries}
        files = [q for q, r in rows.items() if r is None]
        for q in files:
            if not Path(q).is_file():
                raise SimilarError(
                    f"Expected a picture of {cache.path} (a path relative to {cache.root or 'its root'}) "
                    f"or a picture file. Received: {q!r} (neither)."
                )
        embedded = _embed(cache, files, weights) if files else {}
        vectors, sources = [], []
        for q in queries:
            if rows[q] is not None:
                vectors.append(search.vector(rows[q]))
                sources.append("cache")
            else:
                vectors.append(search.normalise(embedded[q])[0])
                sources.append("file")
        extra = 0 if keep_self else 1
        found = search.search(np.stack(vectors), k + extra, allowed)
        codes = assign(cache.paths, split)
        results = []
        for q, source, hits in zip(queries, sources, found):
            own = rows[q]
            hits = [(r, s) for r, s in hits if keep_self or r != own][:k]
            results.append(QueryResult(query=q, source=source, neighbours=neighbours(cache, hits, codes)))
        return results


def neighbours(cache, hits: Sequence[tuple[int, float]], codes: np.ndarray) -> list[Neighbour]:
    """``(row, similarity)`` hits as `Neighbour`s (path, class, split by ``codes`` of `assign`)."""
    return [
        Neighbour(
            path=cache.paths[r],
            similarity=s,
            label=cache.class_names[int(cache.labels[r])],
            split=SPLITS[int(codes[r])] if codes[r] >= 0 else "none",
            row=r,
        )
        for r, s in hits
    ]


def _embed(cache, files: Sequence[str], weights) -> dict[str, np.ndarray]:
    """Features of new picture files, made with the cache's own extraction settings."""
    from headstart.extractor.embed import embed_files
    from headstart.ship.runs import run_config

    info = {"cache": {"fingerprint": cache.fingerprint, "weights_path": cache.weights_path}}
    config = run_config(info, cache.path, weights)  # the weights file is checked against the fingerprint
    res = embed_files(list(files), config, batch_size=min(32, len(files)))
    if res.failed:
        path, reason = res.failed[0]
        raise SimilarError(f"Expected a picture that can be read. Received: {path} ({reason}).")
    if res.features.shape[1] != cache.dim:
        raise SimilarError(
            f"Expected {cache.dim} features per picture, as in {cache.path}. Received: {res.features.shape[1]}."
        )
    by_path = {str(Path(f)): feat for f, feat in zip(res.ok, res.features)}
    return {q: by_path[str(Path(q))] for q in files}
