"""Merge: one feature cache from the caches of the shards of one folder, checked before anything is written.

What lives here: `merge` (the checks and the writing) and `make_self_contained`, which the caller
of a `CacheWriter` (`headstart.extractor.runner.extract`) runs before appending to a merged cache.
`headstart.cache.virtual.check_sources` is what every reader runs on a merged cache.

Two kinds of result:

- **virtual** (default): the merged file holds labels, paths, skipped files and the optional
  per-row datasets, and its ``features`` is an HDF5 virtual dataset over each shard's committed
  rows. Nothing is copied, so the shards must stay: they are recorded by path relative to the
  merged file (``merged_from``, with their row count and creation time); a moved, deleted or
  changed shard makes every command refuse the merged cache with one line instead of reading
  HDF5's fill value. The first `extract` into a merged cache copies the features in (a virtual
  dataset cannot grow), after which the shards are no longer needed.
- **copy** (``copy=True``): one self-contained ordinary cache.

Either way the result is an ordinary cache for every command; it is written next to ``out``
under a temporary name and moved into place with ``os.replace``. The bytes it needs are checked
free, then reserved, before the first is written (`headstart.disk`): a full disk is one
`DiskFullError` line, ``out`` untouched and no temporary file left (one that fills anyway is
closed without another write and removed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from headstart import disk
from headstart.cache.fingerprint import describe_diff, diff_settings, fingerprint_digest
from headstart.cache.hdf5 import (
    ROW_DATASETS,
    _check_schema,
    _fsync_dir,
    _open_any,
    _write_empty,
    chunk_rows_for,
    rewrite,
)
from headstart.cache.lock import CacheLock
from headstart.cache.reader import CacheReader, open_cache
from headstart.cache.shards import Shard
from headstart.cache.virtual import SOURCES_ATTR, check_sources
from headstart.errors import CacheError, DiskFullError, MergeError, ShardError

log = logging.getLogger(__name__)

OPTIONAL_ROWS: dict[str, np.dtype] = {name: np.dtype(dt) for name, dt in ROW_DATASETS.items()}
"""Optional per-row datasets of cache schema 2, carried by a merge when present."""
COPY_ROWS = 1 << 16  # rows of labels / paths / optional datasets copied at a time


@dataclass
class MergeResult:
    """What one `merge` call wrote."""

    out: Path
    rows: int
    skipped: int
    inputs: int
    virtual: bool
    optional: list[str] = field(default_factory=list)


def _is_cache(path: Path) -> bool:
    """True for an HDF5 file with the datasets of a headstart cache (whatever its state)."""
    try:
        with _open_any(path) as f:
            _check_schema(f, path)
        return True
    except (CacheError, OSError):
        return False


def _open_inputs(paths: Sequence[Path]) -> list[CacheReader]:
    readers: list[CacheReader] = []
    try:
        for p in paths:
            if p.is_dir():
                raise MergeError(f"Expected a cache file to merge. Received: {p} (a folder).")
            readers.append(open_cache(p))
    except BaseException:
        for r in readers:
            r.close()
        raise
    return readers


def _check_fit(readers: Sequence[CacheReader], root: str | None, partial: bool) -> None:
    """Refuse caches that do not make one cache: settings, classes, completeness, shards, rows."""
    first = readers[0]
    for r in readers:
        if fingerprint_digest(r.fingerprint) != r.fingerprint_digest:
            raise MergeError(
                f"Expected the fingerprint digest of {r.path} to match its settings. Received: "
                f"{r.fingerprint_digest!r} for settings whose digest is {fingerprint_digest(r.fingerprint)!r} "
                "(the file was altered); extract that shard again."
            )
        diff = diff_settings(first.fingerprint, r.fingerprint)
        if diff:
            raise MergeError(
                f"Expected caches extracted with the same settings. Received: {describe_diff(diff)} "
                f"({first.path} vs {r.path}). Extract every shard with the same options."
            )
        if r.class_names != first.class_names:
            raise MergeError(
                f"Expected the same classes in every cache ({', '.join(first.class_names)} in {first.path}). "
                f"Received: {', '.join(r.class_names)} in {r.path}."
            )
        if (r.dim, r.dtype) != (first.dim, first.dtype):
            raise MergeError(
                f"Expected features of {first.dim} x {first.dtype} in every cache. Received: "
                f"{r.dim} x {r.dtype} in {r.path}."
            )
        if not r.complete:
            raise MergeError(
                f"Expected complete caches. Received: {r.path} (incomplete, {len(r)} rows; an extraction is "
                "running or was interrupted). Run its extract again to finish it, then merge."
            )
        if root is None and r.root != first.root:
            raise MergeError(
                f"Expected caches of one folder. Received: {first.root} ({first.path}) and {r.root} ({r.path}). "
                "If both are the same pictures seen from different machines, pass --root with the folder "
                "the merged cache should refer to."
            )
        _check_rows(r)
    try:
        parts = [Shard.from_json(r.shard, str(r.path)) for r in readers]
    except ShardError as err:
        raise MergeError(str(err)) from None
    sharded = [p for p in parts if p is not None]
    if sharded and len(sharded) != len(parts):
        whole = next(r.path for r, p in zip(readers, parts) if p is None)
        raise MergeError(f"Expected shards of one folder only. Received: {whole} (a whole-folder cache) with shards.")
    if sharded:
        counts = sorted({p.count for p in sharded})
        if len(counts) > 1:
            raise MergeError(f"Expected shards of one --shards count. Received: counts {', '.join(map(str, counts))}.")
        seen: dict[int, Path] = {}
        for r, p in zip(readers, sharded):
            if p.index in seen:
                raise MergeError(
                    f"Expected each shard once. Received: shard {p.index} in {seen[p.index]} and {r.path}."
                )
            seen[p.index] = r.path
        missing = sorted(set(range(counts[0])) - set(seen))
        if missing and not partial:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise MergeError(
                f"Expected all {counts[0]} shards. Received: {len(seen)} (missing: {shown}). "
                "Extract the missing ones, or pass --partial to merge these anyway."
            )


def _check_rows(r: CacheReader) -> None:
    """The per-row datasets of a cache agree with its committed row count (a hostile file may not)."""
    n, f = len(r), r._f
    if len(r.paths) != n or len(r.labels) != n or r.features.shape[0] < n or len(r.failed) != int(f["progress"][1]):
        raise MergeError(
            f"Expected {n} rows of features, labels and paths in {r.path} (its committed count). Received: "
            f"{r.features.shape[0]} features, {len(r.labels)} labels, {len(r.paths)} paths. Extract it again."
        )
    if n and (r.labels.min() < 0 or r.labels.max() >= len(r.class_names)):
        raise MergeError(f"Expected labels below {len(r.class_names)} in {r.path}. Received: {int(r.labels.max())}.")
    for name, dtype in OPTIONAL_ROWS.items():
        if name in f:
            d = f[name]
            if not isinstance(d, h5py.Dataset) or d.ndim != 1 or d.shape[0] < n or d.dtype != dtype:
                raise MergeError(
                    f"Expected /{name} of {n} x {dtype} in {r.path}. Received: "
                    f"{getattr(d, 'shape', '?')} x {getattr(d, 'dtype', '?')}."
                )


def _optional_columns(readers: Sequence[CacheReader]) -> list[str]:
    """Optional datasets to carry: ``view`` if any cache has it (0 where absent), ``sha256`` if all do."""
    names = []
    for name in OPTIONAL_ROWS:
        having = [name in r._f for r in readers]
        if name == "view" and any(having):
            names.append(name)
        elif all(having):
            names.append(name)
        elif any(having):
            log.warning(
                "/%s is missing from %s: the merged cache has no /%s",
                name,
                next(r.path for r, h in zip(readers, having) if not h),
                name,
            )
    return names


def _check_unique(readers: Sequence[CacheReader], columns: Sequence[str]) -> None:
    """No picture (a path, and its view if there are views) twice, among rows and skipped files."""
    where: dict[tuple[str, int], Path] = {}
    for r in readers:
        views = r._f["view"][: len(r)] if "view" in columns and "view" in r._f else np.zeros(len(r), np.int8)
        keys = [(p, int(v)) for p, v in zip(r.paths, views)] + [(p, 0) for p, _ in r.failed]
        for key in keys:
            other = where.get(key)
            if other is not None:
                where_text = f"twice in {r.path}" if other == r.path else f"in {other} and {r.path}"
                raise MergeError(
                    f"Expected each picture in one cache only. Received: {key[0]} {where_text}. "
                    "Merge the shards of one --shards count, or caches of different pictures."
                )
            where[key] = r.path


def merge(
    out: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    copy: bool = False,
    overwrite: bool = False,
    partial: bool = False,
    root: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MergeResult:
    """Merge the caches ``inputs`` (shards of one folder) into the cache ``out``.

    Checks first, writes nothing on a refusal: the same settings (fingerprint and its digest),
    classes and feature shape, every cache complete, each picture in one cache only, and for
    shards: one ``--shards`` count, each shard once, none missing unless ``partial``. ``out`` is
    a virtual cache over the inputs (they must stay where they are), or with ``copy`` one
    self-contained file. ``out`` may replace an existing cache only with ``overwrite``, never a
    file that is not a headstart cache. ``progress(rows_done, rows_total)`` follows the writing.
    """
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise MergeError("Expected at least one cache to merge. Received: none.")
    for i, p in enumerate(paths):
        if not p.exists():
            raise MergeError(f"Expected a cache file to merge. Received: {p} (no such file).")
        for q in paths[:i]:
            if os.path.samefile(p, q):
                raise MergeError(f"Expected each cache once. Received: {q} and {p} (the same file).")
    if out.is_dir():
        raise MergeError(f"Expected OUT to be a file path. Received: {out} (a folder).")
    if out.exists():
        if any(os.path.samefile(out, p) for p in paths):
            raise MergeError(f"Expected OUT to be a new file, not one of the caches merged. Received: {out}.")
        if not _is_cache(out):
            raise MergeError(
                f"Expected OUT to be a new path or a headstart cache to replace. Received: {out} "
                "(a file that is not a headstart cache; it is left alone). Choose another path."
            )
        if not overwrite:
            raise MergeError(f"Expected a new OUT. Received: {out} (a cache already). Pass --overwrite to replace it.")

    readers = _open_inputs(paths)
    try:
        if not copy:
            virtual = [r.path for r in readers if r.features.is_virtual]
            if virtual:
                raise MergeError(
                    f"Expected ordinary caches for a virtual merge. Received: {virtual[0]} (itself a merged "
                    "cache). Pass --copy, or merge its shards instead."
                )
        _check_fit(readers, None if root is None else str(root), partial)
        columns = _optional_columns(readers)
        _check_unique(readers, columns)
        with CacheLock(out):
            result = _write(out, readers, copy=copy, columns=columns, root=root, progress=progress)
    finally:
        for r in readers:
            r.close()
    log.info("merged %d caches into %s: %d rows", len(paths), out, result.rows)
    return result


def _write(
    out: Path, readers: Sequence[CacheReader], *, copy: bool, columns: Sequence[str], root, progress
) -> MergeResult:
    first = readers[0]
    total = sum(len(r) for r in readers)
    failed = [item for r in readers for item in r.failed]
    tmp = out.with_name(out.name + ".merge.tmp")
    tmp.unlink(missing_ok=True)  # ours: a merge that died before its rename
    row_bytes = (first.dim * first.dtype.itemsize if copy else 0) + 4 + 64 + 1 + 48
    need = total * row_bytes + sum(len(p) + len(why) + 64 for p, why in failed) + (2 << 20)
    what = f"merging {total:,} rows{' (a copy of their features)' if copy else ''}"
    kept = f"Nothing was written to {out}: free some space, or merge without --copy." if copy else ""
    kept = kept or f"Nothing was written to {out}: free some space and run the same command again."
    disk.check_free(out.parent, need, what, kept)
    f = _write_empty(
        tmp,
        dim=first.dim,
        dtype=first.dtype.str,
        fingerprint_json=first.fingerprint_json,
        fingerprint_digest=first.fingerprint_digest,
        class_names=first.class_names,
        root=str(Path(root).resolve()) if root is not None else first.root,
        chunk_rows=chunk_rows_for(first.dim, first.dtype),
        versions=json.dumps(first.versions, sort_keys=True),
        weights_path=first.weights_path,
    )
    done = 0
    ds: dict[str, h5py.Dataset] = {}  # handles held to the end: see `headstart.disk.abandon_hdf5`
    try:
        disk.make_room(f, need, out.parent, what, kept)
        for name in columns:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=OPTIONAL_ROWS[name], chunks=(4096,))
        ds.update((name, f[name]) for name in ("labels", "paths", "features", *columns))
        for name in ("labels", "paths", *columns):
            ds[name].resize(total, axis=0)
        if copy:
            ds["features"].resize(total, axis=0)
        else:
            del ds["features"]
            del f["features"]
            layout = h5py.VirtualLayout(shape=(total, first.dim), dtype=first.dtype)
            sources = []
        start = 0
        for r in readers:
            n = len(r)
            for lo in range(0, n, COPY_ROWS):
                hi = min(n, lo + COPY_ROWS)
                ds["labels"][start + lo : start + hi] = r.labels[lo:hi]
                ds["paths"][start + lo : start + hi] = np.array(r.paths[lo:hi], dtype=object)
                for name in columns:
                    ds[name][start + lo : start + hi] = r._f[name][lo:hi] if name in r._f else 0
            if copy:
                for lo, block in r.iter_chunks(dtype=r.dtype):
                    ds["features"][start + lo : start + lo + len(block)] = block
                    if progress:
                        progress(done + lo + len(block), total)
            elif n:
                rel = os.path.relpath(r.path.resolve(), out.resolve().parent)
                layout[start : start + n] = h5py.VirtualSource(rel, "features", shape=r.features.shape)[:n]
                sources.append(
                    {
                        "file": rel,
                        "rows": n,
                        "created": r.created,
                        "last_path": r.paths[-1],
                        "fingerprint_digest": r.fingerprint_digest,
                    }
                )
            start += n
            done += n
            if progress:
                progress(done, total)
        if not copy:
            f.create_virtual_dataset("features", layout, fillvalue=np.nan)
            f.attrs[SOURCES_ATTR] = json.dumps(sources)
        for name in ("failed_paths", "failed_reasons"):
            f[name].resize(len(failed), axis=0)
        if failed:
            f["failed_paths"][:] = np.array([p for p, _ in failed], dtype=object)
            f["failed_reasons"][:] = np.array([why for _, why in failed], dtype=object)
        f["progress"][:] = [total, len(failed), 1]
        f.flush()
    except BaseException as err:
        full = disk.is_disk_full(err)
        if full:  # HDF5 must not write again (a failed flush then a close crashed the process)
            disk.abandon_hdf5(f)
        else:
            f.close()
        ds.clear()
        tmp.unlink(missing_ok=True)
        if full and not isinstance(err, DiskFullError):
            raise disk.disk_full(out, what, kept) from None
        raise
    f.close()
    ds.clear()
    disk.release(tmp)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    return MergeResult(
        out=out, rows=total, skipped=len(failed), inputs=len(readers), virtual=not copy, optional=list(columns)
    )


def make_self_contained(path: Path) -> None:
    """Turn a merged cache (features read from its shards) into an ordinary file before appending:
    a virtual dataset cannot grow. Copies the rows; the caller holds the writer lock
    (`headstart.cache.CacheLock`) and calls this before opening a `CacheWriter` on the file."""
    with _open_any(path) as f:
        virtual = "features" in f and isinstance(f["features"], h5py.Dataset) and f["features"].is_virtual
        if virtual:
            check_sources(f, path)
    if virtual:
        log.warning("%s reads its features from its shards; copying them into it before extending it", path)
        rewrite(path, path)
