"""The HDF5 feature cache: schema, crash-safe appends, recovery, and reading back.

What lives here: the file layout, the writer that appends extracted rows, and the reader
(`open_cache`). What does not: images, models (see `headstart.extractor`) and heads.

Layout (schema version 2; version 1 lacks the optional datasets and still opens)::

    /features        (N, D) float16 or float32, chunked by whole rows (~1 MiB), resizable
    /labels          (N,) int32, index into /class_names
    /paths           (N,) UTF-8, path of each picture relative to the dataset root
    /class_names     (C,) UTF-8, sorted
    /failed_paths    (F,) UTF-8, pictures that could not be decoded ...
    /failed_reasons  (F,) UTF-8  ... and why
    /progress        (3,) int64: committed rows, committed failures, complete (0/1)
    /sha256          (N,) S64, optional: hex SHA-256 of each picture file's bytes ("" = unknown)
    /view            (N,) int8, optional (schema 2, ``extract --views flip``): 0 the picture,
                     1 its horizontal mirror; both rows of a picture share its path
    attrs: schema_version, fingerprint (canonical JSON), fingerprint_digest, root,
           created, versions (JSON of library versions), weights_path (where the weights
           file was at extraction; not part of the fingerprint)

Validation. Opening a cache, to read or to append, checks every dataset and attribute once
(`headstart.cache.validate`): ranks, dtypes, lengths, ``progress`` within them, labels within
the class list, unique class names, the fingerprint's keys and types, and its digest. A broken
file is one `CacheError` line naming the file and the rule; after that, readers trust the file.

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
import datetime as _dt
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from headstart import disk
from headstart.cache import validate as _validate
from headstart.cache.fingerprint import canonical_json, fingerprint_digest, fingerprint_problem
from headstart.errors import CacheBusyError, CacheError, CacheMismatchError, CacheReadError, DiskFullError
from headstart.locking import FileLock, file_locked, lock_file_itself

try:  # POSIX advisory locks; Windows runs without the cross-process guard.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # version 1 has none of the optional per-row datasets
ROW_DATASETS = {"sha256": "S64", "view": "int8"}
"""Optional per-row datasets of schema 2, by name (their rules: `validate.OPTIONAL_DATASETS`): created
when the header asks for them, copied by every row-copying path (recovery, prune, merge), given to
`CacheWriter.append` as keyword arguments. ``sha256`` is the hex SHA-256 of the picture file's bytes
("" = unknown); ``view`` is 0 for the picture, 1 for its horizontal mirror (``extract --views flip``)."""
OPTIONAL_ROWS = ROW_DATASETS
LOCKING = False
"""HDF5's own file locks are off for every open: a reader (``headstart info``, a training run)
holding a shared lock made a starting writer fail, and the reverse. One writer at a time is kept
by our ``.lock`` file instead; SWMR keeps readers consistent without locks (HDF5's locks only help
callers follow SWMR rules), and a reader falls back to SWMR mode on a file being written."""
CHUNK_BYTES = 1 << 20
SWMR_OPEN_TRIES = 5
CHUNKS_PER_READ = 8  # rows are read back 8 chunks (~8 MiB) at a time
_STR = h5py.string_dtype("utf-8")
_COMMIT_ROWS, _COMMIT_FAILED, _COMPLETE = 0, 1, 2


def _is_open_for_write_error(err: OSError) -> bool:
    text = str(err)
    return "already open for write" in text or "h5clear" in text


def _latest_fapl() -> h5py.h5p.PropFAID:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, True)  # see LOCKING
    return fapl


def chunk_rows_for(dim: int, dtype: np.dtype) -> int:
    """Rows per chunk so that one chunk holds about 1 MiB of features."""
    return max(1, CHUNK_BYTES // (dim * np.dtype(dtype).itemsize))


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("headstart", "keras", "tensorflow", "torch", "jax", "h5py", "numpy", "pillow"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    out["hdf5"] = h5py.version.hdf5_version
    return out


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_empty(
    path: Path,
    *,
    dim: int,
    dtype: str,
    fingerprint_json: str,
    fingerprint_digest: str,
    class_names: Sequence[str],
    root: str,
    chunk_rows: int,
    created: str | None = None,
    versions: str | None = None,
    weights_path: str | None = None,
    row_datasets: Sequence[str] = (),
    shard: str = "",
) -> h5py.File:
    """Create every dataset of the schema with zero rows; returns the open file."""
    try:
        f = h5py.File(path, "w", libver="latest", locking=LOCKING)
    except OSError as err:
        if disk.is_disk_full(err):
            path.unlink(missing_ok=True)
            raise disk.disk_full(path, "creating the cache", "Nothing was written: free some space.") from None
        raise CacheError(f"Cannot create the cache {path}: {err}.") from None
    try:
        _create_datasets(f, dim, dtype, chunk_rows, class_names)
        for name in row_datasets:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=ROW_DATASETS[name], chunks=(4096,))
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["fingerprint"] = fingerprint_json
        f.attrs["fingerprint_digest"] = fingerprint_digest
        f.attrs["root"] = root
        f.attrs["created"] = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["versions"] = versions or json.dumps(_library_versions(), sort_keys=True)
        f.attrs["weights_path"] = weights_path or ""
        if shard:
            f.attrs["shard"] = shard
    except BaseException:
        f.close()
        raise
    return f


def _create_datasets(f: h5py.File, dim: int, dtype: str, chunk_rows: int, class_names: Sequence[str]) -> None:
    f.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=(chunk_rows, dim))
    f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int32", chunks=(4096,))
    f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
    f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=_STR)
    f.create_dataset("failed_paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
    f.create_dataset("failed_reasons", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
    f.create_dataset("progress", data=np.zeros(3, dtype="int64"))


def _check_is_file(path: Path) -> None:
    """A `CacheError` unless ``path`` is a regular file (or a link to one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CacheError(f"Expected a feature cache file. Received: {path} (no such file).") from None
    except OSError as err:  # a symbolic link loop (ELOOP), a path through a file (ENOTDIR), permissions
        raise CacheError(f"Expected a feature cache file. Received: {path} ({err.strerror or err}).") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CacheError(f"Expected a feature cache file. Received: {path} ({what}).")


def _open_any(path: Path) -> h5py.File:
    """Open for reading; in SWMR read mode whenever a writer holds the file (or died holding it).

    HDF5 marks a file open for write while a SWMR writer has it; only a SWMR reader may open it
    then, and it sees a consistent file while the writer appends. Rows counted in ``/progress``
    were flushed before they were counted, so what a reader counts it can read;
    `CacheReader.refresh` opens the file again to see rows committed since. A file no writer holds
    is opened plainly: a SWMR reader retries every damaged metadata read 100 times with growing
    pauses (HDF5's default, which h5py cannot change), so a broken cache would hang it for hours.
    """
    _check_is_file(path)
    for attempt in range(_PLAIN_TRIES):
        try:
            return h5py.File(path, "r", locking=LOCKING)
        except OSError as err:
            if _is_open_for_write_error(err):
                break
            # A live writer growing the file can make a plain open see it "truncated" for a moment
            # (its end moved past what the superblock said): try again shortly. A broken file
            # is never opened in SWMR mode, whose retries would hang on it.
            if attempt + 1 < _PLAIN_TRIES and _writer_alive(path):
                time.sleep(0.05 * 2**attempt)
                continue
            raise CacheError(f"Expected an HDF5 feature cache. Received: {path} ({_one_line(err)}).") from None
    try:
        return h5py.File(path, "r", swmr=True, locking=LOCKING)
    except OSError as err:
        raise CacheError(f"Cannot read the feature cache {path}: {_one_line(err)}.") from None


_PLAIN_TRIES = 5  # about 0.75 s in all, only while a writer holds the lock


def _writer_alive(path: Path) -> bool:
    """Whether a process holds the writer lock of ``path`` (see `CacheLock`) right now."""
    if fcntl is None:  # pragma: no cover
        return False
    real = Path(os.path.realpath(path))
    if file_locked(real):
        return True
    try:
        fh = open(real.with_name(real.name + ".lock"), "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_schema(f: h5py.File, path: Path, progress: tuple[int, int, int] | None = None) -> _validate.Contents:
    """Validate the whole file once (see `headstart.cache.validate`); a `CacheError` names what is wrong.
    ``progress``: the counts to trust, read before ``f`` was opened (default: ``f``'s own)."""
    return _validate.check(f, path, READABLE_SCHEMAS, progress)


def rewrite(src: Path, dst: Path, keep: np.ndarray | None = None) -> int:
    """Copy the committed rows of ``src`` (those where ``keep`` is true) into a new file ``dst``.

    Used to recover a file left by a dead writer and to prune rows. Streams chunk by chunk;
    ``dst`` is written under a temporary name and renamed into place. Returns the rows kept.
    The caller must hold the cache's writer lock (`CacheWriter`): a writer that had the file
    open would go on writing to the replaced file.
    """
    tmp = dst.with_name(dst.name + ".rewrite.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with _open_any(src) as f:
        _check_schema(f, src)
        n_rows, n_failed = (int(v) for v in f["progress"][:2])
        kept_text = f"{src} is unchanged: free some space and run the same command again."
        need = int(n_rows * (f["features"].shape[1] * f["features"].dtype.itemsize + 128)) + (2 << 20)
        disk.check_free(dst.parent, need, f"rewriting the {n_rows:,} committed rows of {src}", kept_text)
        complete = int(f["progress"][_COMPLETE])
        feats = f["features"]
        if keep is None:
            keep = np.ones(n_rows, dtype=bool)
        if keep.shape != (n_rows,):
            raise ValueError(f"keep has shape {keep.shape}, expected ({n_rows},)")
        dim = feats.shape[1]
        rows = feats.chunks[0] if feats.chunks else chunk_rows_for(dim, feats.dtype)  # virtual: no chunks
        out = _write_empty(
            tmp,
            dim=dim,
            dtype=feats.dtype.str,
            fingerprint_json=f.attrs["fingerprint"],
            fingerprint_digest=f.attrs["fingerprint_digest"],
            class_names=f["class_names"].asstr()[:].tolist(),
            root=f.attrs["root"],
            chunk_rows=rows,
            created=f.attrs["created"],
            versions=f.attrs["versions"],
            weights_path=f.attrs.get("weights_path", ""),
            row_datasets=[name for name in ROW_DATASETS if name in f],
            shard=str(f.attrs.get("shard", "")),
        )
        try:
            disk.make_room(out, need, dst.parent, f"rewriting the {n_rows:,} committed rows of {src}", kept_text)
            kept = 0
            step = rows * CHUNKS_PER_READ
            for start in range(0, n_rows, step):
                stop = min(n_rows, start + step)
                mask = keep[start:stop]
                if not mask.any():
                    continue
                block = feats[start:stop][mask]
                n = len(block)
                for name, data in (
                    ("features", block),
                    ("labels", f["labels"][start:stop][mask]),
                    ("paths", np.array(f["paths"].asstr()[start:stop], dtype=object)[mask]),
                    *((name, f[name][start:stop][mask]) for name in ROW_DATASETS if name in f),
                ):
                    out[name].resize(kept + n, axis=0)
                    out[name][kept:] = data
                kept += n
            for name in ("failed_paths", "failed_reasons"):
                out[name].resize(n_failed, axis=0)
                if n_failed:
                    out[name][:] = f[name].asstr()[:n_failed]
            out["progress"][:] = [kept, n_failed, complete]
        except BaseException as err:
            if disk.is_disk_full(err):
                disk.abandon_hdf5(out)
                tmp.unlink(missing_ok=True)
                if isinstance(err, DiskFullError):
                    raise
                raise disk.disk_full(dst, f"rewriting the committed rows of {src}", kept_text) from None
            out.close()
            tmp.unlink(missing_ok=True)
            raise
        out.close()
        disk.release(tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    return kept


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


def _make_self_contained(path: Path) -> None:
    """Turn a merged cache (features read from its shards) into an ordinary file before appending:
    a virtual dataset cannot grow. Copies the rows; the caller holds the writer lock."""
    with _open_any(path) as f:
        virtual = "features" in f and isinstance(f["features"], h5py.Dataset) and f["features"].is_virtual
        if virtual:
            from headstart.cache.merge import check_sources

            check_sources(f, path)
    if virtual:
        log.warning("%s reads its features from its shards; copying them into it before extending it", path)
        rewrite(path, path)


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
    shard: str = ""  # JSON of `headstart.extractor.shards.Shard` for a shard's cache, "" for a whole folder

    @property
    def fingerprint_json(self) -> str:
        return canonical_json(self.fingerprint)

    @property
    def fingerprint_digest(self) -> str:
        return fingerprint_digest(self.fingerprint)


class CacheLock:
    """One writer at a time per cache: an exclusive ``flock`` on a ``.lock`` file beside the file
    the path resolves to (a symbolic link and its target share one), and one on the cache file
    itself, which follows it through renames and other links.

    ``acquire`` fails at once with `CacheBusyError` when another process (or another open in
    this one) holds either. Checks that must see the cache as the writer will (its settings, its
    classes) are made after ``acquire``; see `headstart.extractor.runner.extract`. A writer that
    replaces the file (a new cache, a recovery, a prune) calls `pin` to lock the new one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.real = Path(os.path.realpath(self.path))
        self._busy = CacheBusyError(
            f"Another headstart process is writing {self.path}"
            + (f" (that is, {self.real})" if self.real != self.path.absolute() else "")
            + ". Wait for it to finish, or stop it and run the command again to resume."
        )
        self._lock = FileLock(self.real.with_name(self.real.name + ".lock"), self._busy)
        self._file = None  # the open cache file whose own flock we hold

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> CacheLock:
        try:
            self._lock.acquire()
        except OSError as err:
            raise CacheError(f"Cannot write next to {self.path}: {err.strerror or err}.") from None
        try:
            self.pin()
        except BaseException:
            self._lock.release()
            raise
        return self

    def pin(self) -> None:
        """Lock the file now at the path itself (again after it was replaced); `CacheBusyError` when
        another writer holds it under another name (a link, or a name it had before a rename)."""
        try:
            self._file = lock_file_itself(self.real, self._busy, self._file)
        except OSError as err:
            raise CacheError(f"Cannot open {self.path}: {err.strerror or err}.") from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lock.release()


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
            else:
                _make_self_contained(self.path)
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
            fixed = [
                name
                for name in ("features", "labels", "paths", "failed_paths", "failed_reasons")
                if f[name].maxshape[0] is not None
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
            from headstart.cache.merge import check_sources

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
