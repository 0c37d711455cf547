"""Writing a cache: crash-safe appends of extracted rows under one writer lock.


Crash safety. The writer opens the file in HDF5's single-writer/multiple-reader (SWMR) mode,
which orders metadata writes so that the file on disk is always a valid HDF5 file, even after a
``kill -9``. A batch is written, flushed, and only then counted in ``/progress``; rows past the
committed count are ignored by readers and dropped on recovery. A file left behind by a dead
writer carries HDF5's "open for write" mark and can only be opened for reading in SWMR mode; the
next writer copies its committed rows into a fresh file and atomically replaces it. New files are
built under a temporary name and renamed into place, so a half-created cache never exists.

A full disk. HDF5 cannot survive a failed write (its next flush or close fails, then the process
may crash), so the writer makes sure a write cannot fail for space before it hands HDF5 a batch:
the bytes the batch needs are reserved past the end of the file (`headstart.disk.reserve`), or,
where the file system cannot reserve, checked free. Short of space, `DiskFullError` (one line,
"No space left on device ...") comes before any byte of the batch is written, and the cache
closes cleanly with every committed row. Should a write fail anyway (another process took the
space between the check and the write), the file is closed without another write
(`headstart.disk.abandon_hdf5`): it keeps its last commit, and the next writer recovers it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from headstart import disk
from headstart.cache.fingerprint import canonical_json, fingerprint_digest, fingerprint_problem
from headstart.cache.hdf5 import (
    _COMPLETE,
    LOCKING,
    ROW_DATASETS,
    _check_schema,
    _fsync_dir,
    _is_open_for_write_error,
    _latest_fapl,
    _write_empty,
    chunk_rows_for,
    rewrite,
)
from headstart.cache.lock import CacheLock
from headstart.errors import CacheError, CacheMismatchError, DiskFullError

log = logging.getLogger(__name__)


def _describe_shard(text: str) -> str:
    try:
        data = json.loads(text)
        return f"shard {int(data['index'])} of {int(data['count'])}"
    except (ValueError, TypeError, KeyError):
        return f"shard {text!r}" if text else "the whole folder"


def _check_shard(cached: str, now: str, path: Path) -> None:
    """A shard's cache resumes only as the same shard, a whole-folder cache only as a whole."""
    if cached != now:
        raise CacheMismatchError(
            f"Expected the same part of the folder as {path} holds ({_describe_shard(cached)}). "
            f"Received: {_describe_shard(now)}. Use the cache's --shards/--shard options, or another --out."
        )


@dataclass(frozen=True)
class CacheHeader:
    """What a new cache needs to know before the first row arrives."""

    dim: int
    dtype: str
    fingerprint: dict[str, Any]
    class_names: tuple[str, ...]
    root: str
    weights_path: str | None = None  # where the weights file was; its hash is in the fingerprint
    row_datasets: tuple[str, ...] = ("sha256",)  # optional per-row datasets (see ROW_DATASETS)
    shard: str = ""  # JSON of `headstart.cache.shards.Shard` for a shard's cache, "" for a whole folder

    @property
    def fingerprint_json(self) -> str:
        return canonical_json(self.fingerprint)

    @property
    def fingerprint_digest(self) -> str:
        return fingerprint_digest(self.fingerprint)


class CacheWriter:
    """Appends extracted rows to a cache; one process at a time (a ``.lock`` file beside it).

    Use as a context manager. ``append`` stages a batch, ``commit`` makes it durable. A writer
    killed between commits loses at most the uncommitted batch; nothing committed is lost.
    """

    def __init__(self, path: Path, header: CacheHeader, *, overwrite: bool = False, lock: CacheLock | None = None):
        """``lock``: the cache's `CacheLock`, already acquired by the caller (to check settings
        under it); the writer then owns it and releases it when closed. By default the writer
        acquires it itself. A symbolic link is followed: the file it points to is written (and
        replaced, when recovered), the link stays."""
        self.path = Path(os.path.realpath(path))
        self.header = header
        self._overwrite = overwrite
        self._lock = lock
        self._f: h5py.File | None = None
        self._rows = self._failed = 0
        self._staged_rows = self._staged_failed = 0
        self._reserved = False  # bytes reserved past the end of the file, given back on close
        self._ds: dict[str, h5py.Dataset] = {}

    # -- opening -----------------------------------------------------------------------------
    def __enter__(self) -> CacheWriter:
        if self._lock is None:
            self._lock = CacheLock(self.path).acquire()
        try:
            if self._overwrite or not self.path.exists():
                self._create()
            self._open_for_append()
        except BaseException:
            self._release_lock()
            raise
        return self

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        h = self.header
        problem = fingerprint_problem(h.fingerprint)
        if problem:  # a cache we could not read back is never written
            raise CacheError(f"Expected the settings of a headstart extraction. Received: {problem}.")
        tmp = self.path.with_name(self.path.name + ".new.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        disk.check_free(self.path.parent, 1 << 20, "creating the cache", "Nothing was written: free some space.")
        f = _write_empty(
            tmp,
            dim=h.dim,
            dtype=h.dtype,
            fingerprint_json=h.fingerprint_json,
            fingerprint_digest=h.fingerprint_digest,
            class_names=h.class_names,
            root=h.root,
            chunk_rows=chunk_rows_for(h.dim, np.dtype(h.dtype)),
            weights_path=h.weights_path,
            row_datasets=h.row_datasets,
            shard=h.shard,
        )
        f.close()
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        log.info("created cache %s", self.path)

    def _open_swmr_write(self) -> h5py.File:
        flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
        fid = h5py.h5f.open(os.fsencode(self.path), flags, fapl=_latest_fapl())
        return h5py.File(fid)

    def _open_for_append(self) -> None:
        self._lock.pin()  # the file now at the path (new, recovered or pruned) is ours alone
        try:
            f = self._open_swmr_write()
        except OSError as err:
            if not _is_open_for_write_error(err):
                raise CacheError(f"Expected an HDF5 feature cache. Received: {self.path} ({err}).") from err
            # We hold the lock on the file itself, so no live writer has it under any name: a
            # previous run died. Keep what it committed.
            log.warning("%s was left open by an interrupted run; recovering its committed rows", self.path)
            kept = rewrite(self.path, self.path)
            log.info("recovered %d rows", kept)
            self._lock.pin()
            f = self._open_swmr_write()
        try:
            _check_schema(f, self.path)
            if f["features"].is_virtual:
                raise CacheError(
                    f"Expected an ordinary cache to append to. Received: {self.path} (a merged cache that reads "
                    "its features from its shards); call headstart.cache.merge.make_self_contained first."
                )
            fixed = [
                name
                for name in ("features", "labels", "paths", "failed_paths", "failed_reasons", *ROW_DATASETS)
                if name in f and (f[name].maxshape[0] is not None or f[name].chunks is None)
            ]
            if fixed:
                raise CacheError(
                    f"Expected a feature cache that can grow. Received: {self.path} (/{fixed[0]} has a fixed "
                    "size). Extract into another --out, or start again with --overwrite."
                )
            if f["features"].shape[1] != self.header.dim or f["features"].dtype != np.dtype(self.header.dtype):
                raise CacheError(
                    f"Expected features of {self.header.dim} x {self.header.dtype} in {self.path}. "
                    f"Received: {f['features'].shape[1]} x {f['features'].dtype}."
                )
            _check_shard(str(f.attrs.get("shard", "")), self.header.shard, self.path)
            self._rows, self._failed = (int(v) for v in f["progress"][:2])
            self._staged_rows, self._staged_failed = self._rows, self._failed
            # Drop anything staged after the last commit by a writer that died.
            for name in ("features", "labels", "paths", *(n for n in ROW_DATASETS if n in f)):
                if f[name].shape[0] != self._rows:
                    f[name].resize(self._rows, axis=0)
            for name in ("failed_paths", "failed_reasons"):
                if f[name].shape[0] != self._failed:
                    f[name].resize(self._failed, axis=0)
            f["progress"][_COMPLETE] = 0
            f.flush()
        except BaseException:
            f.close()
            raise
        self._f = f
        # Handles held for the writer's life: a handle dropped after a failed write would be closed
        # (and write again) before `_full_disk_guard` could keep HDF5 from writing.
        self._ds = {name: f[name] for name in f if isinstance(f[name], h5py.Dataset)}

    # -- what is already there ---------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self._rows

    def done_paths(self) -> set[str]:
        """Relative paths already in the cache, extracted or recorded as failed."""
        f = self._f
        done = set(f["paths"].asstr()[: self._rows])
        done.update(f["failed_paths"].asstr()[: self._failed])
        return done

    def class_names(self) -> list[str]:
        return self._f["class_names"].asstr()[:].tolist()

    def paths(self) -> list[str]:
        """Relative paths of the committed rows, in row order."""
        return self._f["paths"].asstr()[: self._rows].tolist()

    def set_root(self, root: str) -> str | None:
        """Record that the pictures now lie under ``root``; returns the old root if it changed."""
        old = self._f.attrs["root"]
        if old == root:
            return None
        self.commit()
        self._f.close()
        self._f = None
        with h5py.File(self.path, "r+", locking=LOCKING) as f:  # SWMR writers cannot rewrite attributes
            f.attrs["root"] = root
        self._open_for_append()
        log.info("the pictures of %s moved from %s to %s", self.path, old, root)
        return old

    def keep_rows(self, keep: np.ndarray) -> int:
        """Drop the committed rows where ``keep`` is false (rewrites the file under our lock)."""
        self.commit()
        self._f.close()
        self._f = None
        kept = rewrite(self.path, self.path, keep=np.asarray(keep, dtype=bool))
        self._open_for_append()
        return kept

    # -- writing -----------------------------------------------------------------------------
    def append(self, features: np.ndarray, labels: Sequence[int], paths: Sequence[str], **columns) -> None:
        """Stage one batch of rows; call ``commit`` to make it durable. ``columns``: a value per row
        for each optional dataset this cache has (e.g. ``view=``), and no other; ``sha256=`` (hex digests
        of the picture files) may be left out or given where the cache has no column (stored as "" = unknown,
        or not stored)."""
        n = len(paths)
        if n == 0:
            return
        if features.shape != (n, self.header.dim) or len(labels) != n:
            raise ValueError(f"batch shapes disagree: features {features.shape}, {len(labels)} labels, {n} paths")
        f = self._f
        row_bytes = self.header.dim * f["features"].dtype.itemsize + 4 + 64 + 1 + 32  # + label, sha256, view, heap
        self._make_room(n * row_bytes + sum(len(p.encode("utf-8", "replace")) for p in paths), f"{n:,} more rows")
        have = {name for name in ROW_DATASETS if name in f}
        digests = columns.pop("sha256", None)
        if "sha256" in have:  # unknown digests are stored as ""; a resumed version-1 cache has no column
            columns["sha256"] = [(d or "").encode("ascii") for d in digests] if digests is not None else [b""] * n
        if set(columns) != have or any(len(v) != n for v in columns.values()):
            raise ValueError(f"expected a value per row for {sorted(have)}, got {sorted(columns)}")
        start = self._staged_rows
        with self._full_disk_guard():
            for name, data in (
                ("features", features.astype(f["features"].dtype, copy=False)),
                ("labels", np.asarray(labels, dtype="int32")),
                ("paths", np.array(list(paths), dtype=object)),
                *((name, np.asarray(columns[name], dtype=ROW_DATASETS[name])) for name in sorted(have)),
            ):
                self._ds[name].resize(start + n, axis=0)
                self._ds[name][start:] = data
        self._staged_rows = start + n  # only once all the datasets hold the batch

    def add_failed(self, items: Sequence[tuple[str, str]]) -> None:
        """Stage skipped pictures as (relative path, reason)."""
        if not items:
            return
        self._make_room(sum(64 + len(p.encode("utf-8", "replace")) + len(r) for p, r in items), "skipped pictures")
        start = self._staged_failed
        with self._full_disk_guard():
            for name, col in (("failed_paths", 0), ("failed_reasons", 1)):
                self._ds[name].resize(start + len(items), axis=0)
                self._ds[name][start:] = np.array([it[col] for it in items], dtype=object)
        self._staged_failed = start + len(items)

    def commit(self) -> None:
        """Flush staged rows to disk, then count them as committed."""
        self._make_room(0, "a commit")
        self._flush_commit()

    def _flush_commit(self) -> None:
        f = self._f
        with self._full_disk_guard():
            # A whole-file flush, not per dataset: it also writes the global heap that holds the
            # variable-length path strings, which SWMR does not order for us.
            f.flush()
            self._ds["progress"][:_COMPLETE] = [self._staged_rows, self._staged_failed]
            f.flush()
        self._rows, self._failed = self._staged_rows, self._staged_failed

    def _kept(self) -> str:
        if not self._rows:
            return f"No row was committed to {self.path} yet: free some space and run the same command."
        return (
            f"The {self._rows:,} rows committed before are kept in {self.path}: "
            "free some space and run the same command to resume."
        )

    def _make_room(self, need: int, what: str) -> None:
        """Make sure the next ``need`` bytes (one chunk of each dataset more, and HDF5's metadata) can
        be written before HDF5 gets them: see "A full disk" in the module docstring."""
        f = self._f
        chunks = sum(
            int(np.prod(f[name].chunks)) * (16 if f[name].dtype.kind == "O" else f[name].dtype.itemsize)
            for name in ("features", "labels", "paths", "failed_paths", "failed_reasons", *ROW_DATASETS)
            if name in f and f[name].chunks
        )
        try:
            disk.make_room(f, need + chunks, self.path.parent, f"writing {what}", self._kept())
        except DiskFullError:
            self._stop()
            raise
        self._reserved = True

    def _stop(self) -> None:
        """Short of space: commit what is staged (its bytes were reserved when it was staged), close, and
        release the lock; the caller raises `DiskFullError`."""
        try:
            self._flush_commit()
        finally:
            if self._f is not None:
                with contextlib.suppress(Exception):
                    with self._full_disk_guard():
                        self._f.close()
                self._f, self._ds = None, {}
            if self._reserved:
                disk.release(self.path)
                self._reserved = False
            self._release_lock()

    @contextlib.contextmanager
    def _full_disk_guard(self) -> Iterator[None]:
        """A write that fails for space anyway: close the file without another write (its last commit
        stays readable, the next writer recovers it) and say so in one line."""
        try:
            yield
        except Exception as err:
            if not disk.is_disk_full(err):
                raise
            disk.abandon_hdf5(self._f)
            self._f = None
            self._ds = {}
            self._release_lock()
            raise disk.disk_full(self.path, "writing the feature cache", self._kept()) from None

    def close(self, complete: bool = False) -> None:
        """Commit what is staged and close; ``complete`` marks that every picture was seen."""
        try:
            if self._f is not None:
                try:
                    self.commit()
                    if complete:
                        with self._full_disk_guard():
                            self._ds["progress"][_COMPLETE] = 1
                            self._f.flush()
                finally:
                    if self._f is not None:
                        self._f.close()
                        self._f, self._ds = None, {}
                    if self._reserved:
                        disk.release(self.path)
                        self._reserved = False
        finally:
            self._release_lock()
