"""Opening a cache for audit and map: any damage is one `CacheError`, never a traceback.

`open_cache` checks the layout; this adds the checks the audit relies on (2-D floating-point
features, one label and one path per committed row) and turns whatever a damaged file makes h5py
or the reader raise into one message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from headstart.cache import open_cache
from headstart.cache.reader import CacheReader
from headstart.errors import CacheError, HeadstartError
from headstart.settings.config import config_of

_DAMAGE = (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError, OSError)


def _damaged(path: Path, err: BaseException) -> CacheError:
    return CacheError(
        f"Expected a readable headstart feature cache. Received: {path} ({type(err).__name__}: {str(err)[:200]}); "
        "extract it again with --overwrite."
    )


def check_reader(cache: CacheReader) -> None:
    n = len(cache)
    feats = cache.features
    problems = []
    if feats.ndim != 2 or feats.dtype.kind != "f":
        problems.append(f"features of shape {feats.shape} and type {feats.dtype}, not rows of floats")
    elif feats.shape[0] < n:
        problems.append(f"{feats.shape[0]} feature rows for {n} committed rows")
    if len(cache.labels) != n or len(cache.paths) != n:
        problems.append(f"{len(cache.labels)} labels and {len(cache.paths)} paths for {n} rows")
    elif n and (cache.labels.min() < 0 or cache.labels.max() >= len(cache.class_names)):
        problems.append(
            f"labels from {int(cache.labels.min())} to {int(cache.labels.max())} for {len(cache.class_names)} classes"
        )
    if problems:
        raise CacheError(
            f"Expected a consistent headstart feature cache. Received: {cache.path} with "
            f"{'; '.join(problems)}; extract it again with --overwrite."
        )


@contextlib.contextmanager
def open_checked(path: str | os.PathLike) -> Iterator[CacheReader]:
    """`open_cache`, checked for what the audit needs; errors reading the file become `CacheError`."""
    path = Path(path)
    try:
        cache = open_cache(path)
    except HeadstartError:
        raise
    except _DAMAGE as err:
        raise _damaged(path, err) from None
    try:
        try:
            config_of(cache)  # every setting from this version's registries, as info and predict check
            check_reader(cache)
        except HeadstartError:
            raise
        except _DAMAGE as err:
            raise _damaged(path, err) from None
        yield cache
    finally:
        cache.close()


def read_rows(cache: CacheReader, rows: np.ndarray) -> np.ndarray:
    """`CacheReader.take`, with read errors of a damaged file as `CacheError`."""
    try:
        return cache.take(rows)
    except _DAMAGE as err:
        raise _damaged(cache.path, err) from None


class PictureRows:
    """A cache extracted with ``--views flip`` seen one row a picture: the mean of its two views.

    The audit looks for problems with pictures, not views: a picture and its mirror are not
    duplicates of each other, and a copy mirrored is still a copy. Offers what the audit reads of a
    `CacheReader` (rows, paths, labels, digests, `take`, `iter_chunks`); a picture whose mirror
    row is missing keeps its own row.
    """

    def __init__(self, cache: CacheReader):
        views = np.asarray(cache.views)
        paths = cache.paths
        first = np.flatnonzero(views == 0)
        mirror = {p: i for i, (p, v) in enumerate(zip(paths, views)) if v == 1}
        self.cache = cache
        self.first = first
        self.second = np.array([mirror.get(paths[i], i) for i in first], dtype=np.int64)
        self.paths = [paths[i] for i in first]
        self.labels = np.asarray(cache.labels)[first]
        self.sha256 = [cache.sha256[i] for i in first] if cache.sha256 is not None else None
        self.path, self.dim, self.class_names = cache.path, cache.dim, cache.class_names
        self.root, self.schema_version = cache.root, cache.schema_version
        self.views = None

    def __len__(self) -> int:
        return len(self.first)

    def take(self, indices, dtype=np.float32) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return ((self.cache.take(self.first[idx]) + self.cache.take(self.second[idx])) / 2).astype(dtype, copy=False)

    def iter_chunks(self, rows: int | None = None, dtype=np.float32):
        rows = rows or self.cache.block_rows
        for start in range(0, len(self), rows):
            yield start, self.take(np.arange(start, min(start + rows, len(self))), dtype=dtype)


def by_picture(cache: CacheReader):
    """``cache`` itself, or a `PictureRows` of it when it holds mirrored views."""
    views = getattr(cache, "views", None)
    return PictureRows(cache) if views is not None and (np.asarray(views) != 0).any() else cache
