"""Validation at the door of a feature cache: every dataset and attribute checked once, on open.

What lives here: the rules a cache file must follow (`DATASETS`, `ATTRIBUTES`) and `validate`,
which checks an open HDF5 file against them and returns what it read, so that the reader trusts
the file afterwards. What does not: opening files, locks, writing (see `headstart.cache.hdf5`, `headstart.cache.writer`).
A file that breaks a rule is a `CacheError` with one line naming the file and the rule.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from headstart.cache import h5safety
from headstart.cache.fingerprint import fingerprint_digest, fingerprint_problem
from headstart.errors import CacheError, CacheReadError, Invalid


@dataclass(frozen=True)
class Column:
    """What one dataset must look like: its rank, its kind of values, and what its length follows.

    ``kind``: ``"float"`` (float16 or float32), ``"int"`` (any integer type), ``"text"`` (HDF5
    strings), ``"ascii"`` (fixed-length byte strings). ``per``: ``"row"`` (one entry per committed
    row), ``"failed"`` (one per skipped picture) or None.
    """

    ndim: int
    kind: str
    per: str | None = None


DATASETS: dict[str, Column] = {
    "features": Column(2, "float", per="row"),
    "labels": Column(1, "int", per="row"),
    "paths": Column(1, "text", per="row"),
    "class_names": Column(1, "text"),
    "failed_paths": Column(1, "text", per="failed"),
    "failed_reasons": Column(1, "text", per="failed"),
    "progress": Column(1, "int"),
}
"""Datasets every cache has."""

OPTIONAL_DATASETS: dict[str, Column] = {
    "sha256": Column(1, "ascii", per="row"),
    "view": Column(1, "int", per="row"),  # extract --views flip: 0 the picture, 1 its mirror
}
"""Per-row datasets a cache may have (schema 2 adds ``sha256`` and ``view``: one line each here)."""

ATTRIBUTES: dict[str, type] = {
    "schema_version": int,
    "fingerprint": str,
    "fingerprint_digest": str,
    "root": str,
    "created": str,
    "versions": str,
}
OPTIONAL_ATTRIBUTES: dict[str, type] = {"weights_path": str}

FEATURE_DTYPES = ("float16", "float32")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contents:
    """What `validate` read from a valid cache (the committed part of it)."""

    n_rows: int
    n_failed: int
    complete: bool
    labels: np.ndarray
    paths: list[str]
    class_names: list[str]
    failed: list[tuple[str, str]]
    fingerprint_json: str
    fingerprint: dict[str, Any]
    fingerprint_digest: str
    root: str
    created: str
    versions: dict[str, Any]
    weights_path: str | None
    schema_version: int


def _kind_ok(ds: h5py.Dataset, kind: str) -> bool:
    dtype = ds.dtype
    if kind == "float":
        return dtype.name in FEATURE_DTYPES
    if kind == "int":
        return dtype.kind in "iu"
    if kind == "text":
        return h5py.check_string_dtype(dtype) is not None
    if kind == "ascii":
        return dtype.kind == "S"
    raise ValueError(kind)


_KIND_NAMES = {"float": "float16 or float32", "int": "integers", "text": "strings", "ascii": "byte strings"}


def _dataset(f: h5py.File, name: str, col: Column) -> h5py.Dataset:
    if not isinstance(f.get(name, getlink=True), h5py.HardLink):
        raise Invalid(f"/{name} is a link, expected a dataset")  # an external link opens another file
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise Invalid(f"/{name} is a group, not a dataset")
    if obj.ndim != col.ndim:
        raise Invalid(f"/{name} has shape {obj.shape}, expected {col.ndim} dimension{'s' if col.ndim > 1 else ''}")
    if not _kind_ok(obj, col.kind):
        raise Invalid(f"/{name} holds {obj.dtype}, expected {_KIND_NAMES[col.kind]}")
    return obj


def _attr(f: h5py.File, name: str, typ: type) -> Any:
    value = f.attrs[name]
    if typ is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        return int(value) if ok else _wrong_attr(name, value, "an integer")
    if not isinstance(value, str):
        _wrong_attr(name, value, "a string")
    return value


def _wrong_attr(name: str, value: Any, expected: str):
    shown = value.item() if isinstance(value, np.generic) else value
    raise Invalid(f"attribute {name} is {type(value).__name__} {shown!r:.40}, expected {expected}")


def _text(ds: h5py.Dataset, stop: int, what: str) -> list[str]:
    try:
        return ds.asstr()[:stop].tolist()
    except UnicodeDecodeError:
        raise Invalid(f"{what} holds bytes that are not UTF-8") from None


def _visible_text(ds: h5py.Dataset, stop: int, what: str) -> list[str]:
    """The strings ``[:stop]``, or in SWMR mode the longest prefix of them this open can read.

    HDF5 does not order variable-length strings for SWMR readers: the newest strings of a live
    writer may lie past the end of the file as this process knows it (every open of a file in one
    process shares what the first open knew). Those rows are left for a later open or `refresh`.
    """
    try:
        return _text(ds, stop, what)
    except OSError as err:
        if not (ds.file.swmr_mode and "EOA" in str(err)):
            raise
    out: list[str] = []
    block = 1024
    for start in range(0, stop, block):  # up to the first string this open cannot read
        try:
            out.extend(_text_range(ds, start, min(start + block, stop), what))
            continue
        except OSError:
            pass
        for i in range(start, min(start + block, stop)):
            try:
                out.extend(_text_range(ds, i, i + 1, what))
            except OSError:
                break
        break
    log.info(
        "%s: %d of %d %s are visible to this process yet (a writer is appending)",
        ds.file.filename,
        len(out),
        stop,
        what,
    )
    return out


def _text_range(ds: h5py.Dataset, start: int, stop: int, what: str) -> list[str]:
    try:
        return ds.asstr()[start:stop].tolist()
    except UnicodeDecodeError:
        raise Invalid(f"{what} holds bytes that are not UTF-8") from None


def _check_path(rel: str) -> str | None:
    if not rel:
        return "an empty path"
    if rel.startswith("/") or posixpath.normpath(rel) != rel or rel.split("/", 1)[0] == "..":
        return f"{rel!r:.60} (not a path inside the root)"
    return None


def validate(
    f: h5py.File, supported_versions: tuple[int, ...], progress: tuple[int, int, int] | None = None
) -> Contents:
    """Check every rule of the schema against the open file ``f``; `Invalid` names the first broken one."""
    problem = h5safety.problem(f, allow_virtual=frozenset({"features"}))  # before anything is read
    if problem:
        raise Invalid(f"{problem}; a cache must keep its data in itself")
    missing = [name for name in DATASETS if name not in f]
    if missing:
        raise Invalid(f"no dataset {', '.join('/' + m for m in missing)}")
    missing = [name for name in ATTRIBUTES if name not in f.attrs]
    if missing:
        raise Invalid(f"no attribute {', '.join(missing)}")
    version = _attr(f, "schema_version", int)
    if version not in supported_versions:
        raise Invalid(f"schema version {version}, expected {' or '.join(map(str, supported_versions))}")
    ds = {name: _dataset(f, name, col) for name, col in DATASETS.items()}
    ds.update({name: _dataset(f, name, col) for name, col in OPTIONAL_DATASETS.items() if name in f})
    columns = {**DATASETS, **OPTIONAL_DATASETS}
    if f.swmr_mode:  # a writer may be appending: read /progress first, then every length as of now
        ds["progress"].refresh()

    features = ds["features"]
    if features.shape[1] < 1:
        raise Invalid(f"/features has shape {features.shape}, expected at least one value per row")
    if ds["progress"].shape != (3,):
        raise Invalid(f"/progress has shape {ds['progress'].shape}, expected (3,)")
    n_rows, n_failed, complete = progress if progress is not None else (int(v) for v in ds["progress"][:])
    if f.swmr_mode:  # the writer flushes rows before it counts them: every length is now >= its count
        for d in ds.values():
            d.refresh()
    for count, per, what in ((n_rows, "row", "rows"), (n_failed, "failed", "skipped pictures")):
        lengths = {name: d.shape[0] for name, d in ds.items() if columns[name].per == per}
        shortest = min(lengths, key=lengths.get)
        if not 0 <= count <= lengths[shortest]:
            raise Invalid(
                f"/progress counts {count} {what} but /{shortest} holds {lengths[shortest]}"
                if count > 0
                else f"/progress counts {count} {what}"
            )
    if complete not in (0, 1):
        raise Invalid(f"/progress marks completeness {complete}, expected 0 or 1")

    class_names = _text(ds["class_names"], None, "/class_names")
    if not class_names:
        raise Invalid("/class_names is empty, expected one name per class")
    bad = next((n for n in class_names if n in ("", ".", "..") or "/" in n or "\0" in n), None)
    if bad is not None:
        raise Invalid(f"/class_names holds {bad!r:.40}, expected folder names")
    if len(set(class_names)) != len(class_names):
        dup = next(n for i, n in enumerate(class_names) if n in class_names[:i])
        raise Invalid(f"/class_names holds {dup!r:.40} twice")
    paths = _visible_text(ds["paths"], n_rows, "/paths")
    n_rows = len(paths)
    labels = ds["labels"][:n_rows].astype(np.int64)
    if n_rows and (labels.min() < 0 or labels.max() >= len(class_names)):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(class_names)))[0])
        raise Invalid(f"/labels[{bad}] is {labels[bad]}, expected 0 to {len(class_names) - 1} (one per class name)")
    if "view" in ds:
        views = ds["view"][:n_rows]
        if n_rows and (views.min() < 0 or views.max() > 1):
            raise Invalid(f"/view[{int(np.flatnonzero((views < 0) | (views > 1))[0])}] is not 0 or 1")
    for i, rel in enumerate(paths):
        problem = _check_path(rel)
        if problem:
            raise Invalid(f"/paths[{i}] is {problem}")
    failed = list(
        zip(
            _visible_text(ds["failed_paths"], n_failed, "/failed_paths"),
            _visible_text(ds["failed_reasons"], n_failed, "/failed_reasons"),
        )
    )

    text = _attr(f, "fingerprint", str)
    try:
        fingerprint = json.loads(text)
    except (ValueError, RecursionError):
        raise Invalid(f"attribute fingerprint is not JSON ({text!r:.40})") from None
    problem = fingerprint_problem(fingerprint)
    if problem:
        raise Invalid(problem)
    stored = _attr(f, "fingerprint_digest", str)
    if stored != fingerprint_digest(fingerprint):
        raise Invalid(
            f"fingerprint_digest {stored!r:.24} does not match the fingerprint ({fingerprint_digest(fingerprint)}): "
            "the settings were edited"
        )
    if fingerprint["dtype"] != features.dtype.name:
        raise Invalid(f"/features holds {features.dtype}, but the fingerprint says {fingerprint['dtype']!r:.20}")
    versions_text = _attr(f, "versions", str)
    try:
        versions = json.loads(versions_text)
    except (ValueError, RecursionError):
        versions = None
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise Invalid(f"attribute versions is {versions_text!r:.40}, expected a JSON object of version strings")
    weights_path = _attr(f, "weights_path", str) if "weights_path" in f.attrs else ""
    return Contents(
        n_rows=n_rows,
        n_failed=n_failed,
        complete=bool(complete),
        labels=labels,
        paths=paths,
        class_names=class_names,
        failed=failed,
        fingerprint_json=text,
        fingerprint=fingerprint,
        fingerprint_digest=stored,
        root=_attr(f, "root", str),
        created=_attr(f, "created", str),
        versions=versions,
        weights_path=weights_path or None,
        schema_version=version,
    )


def check(
    f: h5py.File,
    path: str | os.PathLike,
    supported_versions: tuple[int, ...],
    progress: tuple[int, int, int] | None = None,
) -> Contents:
    """`validate`, with any broken rule or read error turned into one `CacheError` line naming ``path``."""
    try:
        return validate(f, supported_versions, progress)
    except Invalid as err:
        problem, error = str(err), CacheError
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as err:  # HDF5 read errors
        problem, error = f"cannot be read: {_one_line(err)}", CacheReadError
    raise error(
        f"Expected a headstart feature cache. Received: {Path(path)} ({problem}). "
        "Extract it again (extract --overwrite), or use another cache."
    )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
