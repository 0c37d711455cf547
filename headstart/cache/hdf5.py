"""The cache file on disk: its layout, creating, opening, validating and rewriting an HDF5 cache file.

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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from headstart import disk
from headstart.cache import validate as _validate
from headstart.errors import CacheError, DiskFullError
from headstart.locking import file_locked

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
    for name in ("headstart", "keras", "tensorflow", "torch", "jax", "h5py", "numpy", "pillow", "simplejpeg"):
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
