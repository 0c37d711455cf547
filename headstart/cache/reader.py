"""Reading a cache back: validated once on open, features in slices or blocks; `open_cache`."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.cache.hdf5 import (
    CHUNKS_PER_READ,
    SWMR_OPEN_TRIES,
    _check_schema,
    _one_line,
    _open_any,
    chunk_rows_for,
)
from headstart.cache.virtual import check_sources
from headstart.errors import CacheError, CacheReadError

log = logging.getLogger(__name__)


class CacheReader:
    """A feature cache opened for reading: features in slices, labels, paths, class names.

    The whole file is validated once when it is opened (`headstart.cache.validate`): what the
    reader holds after that can be trusted. ``features`` is the HDF5 dataset itself (slice it to
    read rows; it may hold staged rows past ``len(cache)`` while a writer is running, so prefer
    ``read``/``take``/``iter_chunks``).

    ``require_finite``: when true, ``read``, ``take`` and ``iter_chunks`` check every block they
    return and raise a `CacheError` naming the first rows with NaN or infinite features (no second
    pass over the file); `check_finite` makes that pass on its own.
    """

    def __init__(self, path: str | os.PathLike, *, require_finite: bool = False):
        self.path = Path(path)
        self.require_finite = require_finite
        self._f = None
        self._open()

    def _open(self) -> None:
        """Open and validate, reading only the rows committed before the file was opened.

        A SWMR reader knows the end of the file as of its open, and HDF5 does not order the
        variable-length strings (paths) of a live writer for SWMR: ``/progress`` is read first,
        the file is opened again, and a read error (strings past the end this open knows) is
        retried on a fresh open.
        """
        for attempt in range(SWMR_OPEN_TRIES):
            with _open_any(self.path) as f:
                try:
                    progress = tuple(int(v) for v in f["progress"][:3])
                except Exception:  # no /progress, or a damaged one: validation says which
                    progress = None
            f = _open_any(self.path)
            try:
                self._f = f
                self._load(progress)
                return
            except CacheReadError:
                f.close()
                if attempt == SWMR_OPEN_TRIES - 1:
                    raise
                log.debug("retrying to open %s (attempt %d): %s", self.path, attempt + 2, sys.exc_info()[1])
                time.sleep(0.02 * (attempt + 1))
            except BaseException:
                f.close()
                raise

    def _load(self, progress: tuple[int, int, int] | None) -> None:
        c = _check_schema(self._f, self.path, progress)
        if self._f["features"].is_virtual:  # a merged cache: its features live in the shards
            check_sources(self._f, self.path)
        self._n = c.n_rows
        self.complete = c.complete
        self.features = self._f["features"]
        self.labels = c.labels
        self.paths: list[str] = c.paths
        self.class_names: list[str] = c.class_names
        self.failed: list[tuple[str, str]] = c.failed
        self.fingerprint_json: str = c.fingerprint_json
        self.fingerprint: dict[str, Any] = c.fingerprint
        self.fingerprint_digest: str = c.fingerprint_digest
        self.root: str = c.root
        self.created: str = c.created
        self.versions: dict[str, str] = c.versions
        self.weights_path: str | None = c.weights_path
        self.schema_version = c.schema_version
        # Schema 2, `extract --views flip`: 0 = the picture, 1 = its mirror; None without views.
        self.views: np.ndarray | None = self._f["view"][: self._n].astype(np.int8) if "view" in self._f else None
        self.shard: str = str(self._f.attrs.get("shard", ""))  # JSON of the shard, "" for a whole folder
        self.sha256: list[str] | None = None
        """Hex SHA-256 of each row's picture file ("" = unknown); None in a version-1 cache."""
        if "sha256" in self._f:  # rank, kind and length checked by validate
            column = self._f["sha256"]
            if column.dtype != np.dtype("S64"):
                raise CacheError(f"Expected /sha256 of 64-byte strings in {self.path}. Received: {column.dtype}.")
            self.sha256 = [d.decode("ascii", "replace") for d in column[: self._n]]

    def refresh(self) -> int:
        """See the rows a running writer committed since the cache was opened (or last refreshed);
        the file is opened again and validated as on open. Returns how many rows were added."""
        before = self._n
        self._f.close()
        self._open()
        return self._n - before

    def __len__(self) -> int:
        return self._n

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.features.dtype

    @property
    def chunk_rows(self) -> int:
        chunks = self.features.chunks
        return int(chunks[0]) if chunks else chunk_rows_for(self.dim, self.dtype)

    @property
    def block_rows(self) -> int:
        """Rows in one read-back block (whole chunks, about 8 MiB)."""
        return self.chunk_rows * CHUNKS_PER_READ

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Raw rows ``start:stop`` from the file; an HDF5 read error becomes a `CacheError`."""
        try:
            return self.features[start:stop]
        except (OSError, RuntimeError) as err:
            raise CacheError(
                f"Cannot read rows {start}-{stop} of the feature cache {self.path}: {_one_line(err)}. "
                "The file is damaged: extract it again (extract --overwrite)."
            ) from None

    def _check_block(self, rows: np.ndarray, index: np.ndarray | int) -> None:
        """A `CacheError` naming the first rows of ``rows`` (file rows ``index``) that are not finite."""
        ok = np.isfinite(rows).all(axis=1)
        if ok.all():
            return
        bad = np.flatnonzero(~ok)
        at = (np.asarray(index)[bad] if np.ndim(index) else index + bad).tolist()
        raise non_finite_error(self, at)

    def read(self, start: int = 0, stop: int | None = None, dtype=np.float32) -> np.ndarray:
        """Rows ``start:stop`` of the committed features, converted to ``dtype``."""
        stop = self._n if stop is None else min(stop, self._n)
        rows = self._rows(start, stop)
        if self.require_finite:
            self._check_block(rows, start)
        return rows.astype(dtype, copy=False)

    def take(self, indices: Sequence[int], dtype=np.float32) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed), read a chunk-sized block at a time."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"row index out of range for a cache of {self._n} rows")
        out = np.empty((len(idx), self.dim), dtype=dtype)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        block = self.block_rows
        i = 0
        while i < len(sorted_idx):
            lo = sorted_idx[i] - sorted_idx[i] % block
            j = np.searchsorted(sorted_idx, lo + block, side="left")
            rows = self._rows(lo, min(lo + block, self._n))[sorted_idx[i:j] - lo]
            if self.require_finite:
                self._check_block(rows, sorted_idx[i:j])
            out[order[i:j]] = rows
            i = j
        return out

    def iter_chunks(self, rows: int | None = None, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, features)`` blocks covering every committed row, in order."""
        rows = rows or self.block_rows
        for start in range(0, self._n, rows):
            yield start, self.read(start, start + rows, dtype=dtype)

    def check_finite(self) -> None:
        """One streaming pass over the committed features: a `CacheError` naming the paths of the
        first rows that hold NaN or infinity (a fit or a score on them would be silently wrong)."""
        for start in range(0, self._n, self.block_rows):
            self._check_block(self._rows(start, min(start + self.block_rows, self._n)), start)

    def counts(self) -> dict[str, int]:
        """Rows per class name."""
        bins = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, bins)}

    def missing_files(self, root: str | os.PathLike | None = None) -> list[str]:
        """Cached paths whose picture no longer exists under ``root`` (default: the extraction root)."""
        base = Path(root or self.root)
        return [p for p in self.paths if not (base / p).exists()]

    def size_bytes(self) -> int:
        return self.path.stat().st_size


def non_finite_error(cache: CacheReader, rows: Sequence[int], shown: int = 3) -> CacheError:
    """The error for rows of ``cache`` whose features are NaN or infinite, naming the first few."""
    names = ", ".join(cache.paths[i] for i in rows[:shown])
    more = f" and {len(rows) - shown} more in this block" if len(rows) > shown else ""
    return CacheError(
        f"Expected finite features in {cache.path}. Received: NaN or infinity in the rows of {names}{more}. "
        "Extract them again (extract --overwrite), or make a cache without them."
    )


def open_cache(path: str | os.PathLike, *, require_finite: bool = False) -> CacheReader:
    """Open a feature cache for reading (also one still being written, or left by a crash).

    The file is validated once here; ``require_finite`` makes every read check its rows for
    NaN / infinity as it goes (see `CacheReader`).
    """
    return CacheReader(path, require_finite=require_finite)
