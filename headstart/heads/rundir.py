"""The run folder: its files and how it is written (locked, atomic); `run_reader` reads it back.

A run folder (``train --out``)::

    head.json, head.npz, standardization.npz   the fitted head (see `headstart.heads.registry`)
    run.json       kind, format, head and options, cache (path, fingerprint, digest), split, class
                   names, versions, seconds, and ``files``: the SHA-256 of every other file written
    metrics.json   validation and test metrics;  history.csv;  curves.png, confusion.png, calibration.png

A comparison folder (``compare --out``) holds ``comparison.json`` (kind, format, ``runs``: the
run sub-folders), ``comparison.png`` and one run folder per head.

Writing. One writer per folder (a lock file beside it; a second writer is refused). The result
is built in a hidden sibling folder and swapped into place in one step (``renameat2`` with
``RENAME_EXCHANGE`` on Linux): a kill at any moment leaves the old result or the new one, whole.
An existing ``--out`` is replaced only when it is empty or a headstart result whose files all
match its manifest; a folder with any other file is refused, and nothing we did not write is
ever deleted.

Reading it back is `headstart.heads.run_reader` (`read_run`, `load_run`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata as _md
import json
import logging
import os
import platform
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from headstart.cache.hdf5 import _fsync_dir
from headstart.errors import RunBusyError, RunError
from headstart.locking import exclusive_lock, lock_path_for

log = logging.getLogger(__name__)

RUN_FORMAT = 2
RUN_KIND = "headstart-run"
COMPARISON_KIND = "headstart-comparison"
SWEEP_KIND = "headstart-sweep"
JOURNAL_KIND = "headstart-sweep-journal"
SWEEP_JSON = "sweep.json"
JOURNAL = "journal.jsonl"
BEST = "best"
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
HISTORY_CSV = "history.csv"
COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
PLOTS = ("curves.png", "confusion.png", "calibration.png")
_PARTIAL = ".partial-"


# -- writing -----------------------------------------------------------------------------------


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def manifest(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the plain files directly in ``folder``."""
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def seal_run(folder: Path, run: Mapping[str, Any]) -> None:
    """Write ``run.json`` last, with the manifest of every file already in ``folder``."""
    write_json(folder / RUN_JSON, {"kind": RUN_KIND, "format": RUN_FORMAT, **run, "files": manifest(folder)})


def seal_comparison(folder: Path, data: Mapping[str, Any], runs: list[str]) -> None:
    files = manifest(folder)
    write_json(
        folder / COMPARISON_JSON, {"kind": COMPARISON_KIND, "format": RUN_FORMAT, **data, "runs": runs, "files": files}
    )


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _manifest_matches(folder: Path, files: Any, extra: set[str]) -> bool:
    """Every entry of ``folder`` is ``extra`` or a listed plain file whose SHA-256 matches."""
    if not isinstance(files, dict):
        return False
    for p in folder.iterdir():
        if p.name in extra:
            continue
        if p.is_symlink() or not p.is_file() or p.name not in files:
            return False
        if file_sha256(p) != files[p.name]:
            return False
    return True


def is_run(folder: Path) -> bool:
    """A folder that headstart wrote as a run and that holds nothing else."""
    data = _json_object(folder / RUN_JSON)
    return bool(data) and data.get("kind") == RUN_KIND and _manifest_matches(folder, data.get("files"), {RUN_JSON})


def is_comparison(folder: Path) -> bool:
    """A comparison folder that headstart wrote and that holds nothing else (its runs checked too)."""
    data = _json_object(folder / COMPARISON_JSON)
    if not data or data.get("kind") != COMPARISON_KIND:
        return False
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        return False
    for name in runs:
        sub = folder / name
        if sub.exists() and (sub.is_symlink() or not sub.is_dir() or not is_run(sub)):
            return False
    return _manifest_matches(folder, data.get("files"), {COMPARISON_JSON, *runs})


def journal_header(path: Path) -> dict | None:
    """The first line of a sweep journal, when it is a journal header headstart wrote (else None)."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
        data = json.loads(first.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == JOURNAL_KIND else None


_JOURNAL_START = b'{"kind":"' + JOURNAL_KIND.encode() + b'"'


def unstarted_journal(path: Path) -> bool:
    """An empty journal, or one whose header line never ended and is the start of ours: what a sweep
    of an older headstart left when the disk filled (or it was killed) as it started."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            data = fh.read(4097)
    except OSError:
        return False
    return len(data) <= 4096 and b"\n" not in data and _JOURNAL_START.startswith(data[: len(_JOURNAL_START)])


def is_sweep(folder: Path) -> bool:
    """A sweep folder headstart wrote: a journal alone (an unfinished sweep, or an unstarted one whose
    journal is empty), or a finished sweep (sweep.json whose manifest matches, its journal, and its
    best run) that holds nothing else."""
    if journal_header(folder / JOURNAL) is None:
        return unstarted_journal(folder / JOURNAL) and {p.name for p in folder.iterdir()} == {JOURNAL}
    data = _json_object(folder / SWEEP_JSON)
    if data is None:
        return not (folder / SWEEP_JSON).exists() and {p.name for p in folder.iterdir()} == {JOURNAL}
    if data.get("kind") != SWEEP_KIND:
        return False
    best = folder / BEST
    if best.exists() and (best.is_symlink() or not best.is_dir() or not is_run(best)):
        return False
    return _manifest_matches(folder, data.get("files"), {SWEEP_JSON, JOURNAL, BEST})


def _replaceable(out: Path, kind: str) -> bool:
    if not any(out.iterdir()):
        return True
    if kind == SWEEP_KIND:
        return is_sweep(out)
    return is_comparison(out) if kind == COMPARISON_KIND else is_run(out)


def check_out(out: Path, kind: str) -> None:
    """``out`` must be new, empty, or an earlier headstart result of the same kind (which is replaced)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RunError(
            f"Expected --out to be a folder. Received: {out} ({'a link' if out.is_symlink() else 'a file'})."
        )
    if out.is_dir() and not _replaceable(out, kind):
        what = {RUN_KIND: "run", COMPARISON_KIND: "comparison", SWEEP_KIND: "sweep"}[kind]
        raise RunError(
            f"Expected --out to be a new or empty folder, or an earlier headstart {what} to replace. "
            f"Received: {out}, which holds files headstart did not write (or that changed since); "
            "choose another --out. Nothing was deleted."
        )


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _sync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [*(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync_dir(d)


@contextlib.contextmanager
def result_writer(out: Path, kind: str) -> Iterator[Path]:
    """Build a result in a hidden sibling folder and swap it into ``out`` when the block ends.

    Holds ``out``'s lock throughout (a second writer gets `RunBusyError`); checks ``out`` under the
    lock; removes the hidden leftovers of writers that were killed (only ours exist under the lock).
    If the block raises, ``out`` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path_for(out), busy_error(out)):
        with staged_result(out, kind) as tmp:
            yield tmp


def busy_error(out: Path) -> RunBusyError:
    return RunBusyError(f"Another headstart process is writing {out}. Wait for it to finish, or choose another --out.")


@contextlib.contextmanager
def staged_result(out: Path, kind: str) -> Iterator[Path]:
    """`result_writer` without the lock, for a caller that holds ``out``'s lock already (a sweep)."""
    out = Path(out)
    check_out(out, kind)
    prefix = f".{out.name}{_PARTIAL}"
    for stale in out.parent.glob(prefix + "*"):
        if stale.is_dir() and not stale.is_symlink():
            log.info("removing %s, left by a run that was killed", stale)
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f"{prefix}{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        _sync_tree(tmp)
        if not out.exists():
            os.rename(tmp, out)
        elif _exchange(tmp, out):
            old = tmp  # the previous result now sits at the temporary name
            if _replaceable(old, kind):
                shutil.rmtree(old)
            else:  # someone added a file while we worked: keep it all, visibly
                kept = out.parent / f"{out.name}.previous-{os.getpid()}"
                os.rename(old, kept)
                log.warning("the previous %s gained other files while this run worked; it is kept at %s", out, kept)
        else:  # no atomic exchange here: two renames, the old result kept until the new is in place
            old = out.parent / f"{prefix}{os.getpid()}-old"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        _fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("headstart", "keras", "tensorflow", "scikit-learn", "numpy", "h5py", "matplotlib"):
        with contextlib.suppress(_md.PackageNotFoundError):
            out[name] = _md.version(name)
    return out


versions = _versions
