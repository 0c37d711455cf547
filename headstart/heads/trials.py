"""Trials of a sweep: scoring one setting, running many in worker processes, and the journal that makes a sweep resumable."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.disk import disk_full, fsync_dir, is_disk_full
from headstart.errors import RunError, SweepError
from headstart.heads import metrics as M
from headstart.heads.base import fitted_info
from headstart.heads.prepare import Data, _memory_budget
from headstart.heads.registry import head_params, head_params_json, make_head
from headstart.heads.training import predict_split

log = logging.getLogger(__name__)

TRIAL_KIND = "headstart-trial"
KERAS_HEADS = ("softmax", "mlp")
KERAS_TRIAL_BYTES = 700 << 20  # TensorFlow and a small model in a worker process


# -- trials --------------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass
class Trial:
    """One setting to fit (``params`` are the trial's own; ``fixed`` ones are shared)."""

    params: dict[str, Any]
    rung: int = 0
    record: dict[str, Any] | None = None  # filled when done (or read from the journal)

    def key(self, context: str, head: str, fixed: Mapping[str, Any]) -> str:
        """Same key, same trial: the context and every option the head gets, defaults included (so
        ``random_state=0`` given or left to its default is the same trial)."""
        options = head_params_json(make_head(head, **{**fixed, **self.params}))
        return _digest({"context": context, "params": options})


def score_trial(data: Data, head_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Fit one setting on the training split and score it on the validation split only."""
    head = make_head(head_name, **params)
    val = data.sources["val"]
    t0 = time.perf_counter()
    # A trial stopped by its epoch budget is expected in a sweep (halving): no warning per trial.
    quiet = logging.getLogger("headstart.heads.keras_heads")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        head.fit_source(data.sources["train"], val)
    except ValueError as err:
        raise RunError(f"Training the {head_name} head failed: {err}") from err
    finally:
        quiet.setLevel(level)
    seconds = time.perf_counter() - t0
    proba = predict_split(head, val, len(data.class_names))
    m = M.split_metrics(val.labels, proba, data.class_names)
    return {
        "val": {"accuracy": m["accuracy"], "log_loss": m["log_loss"], "ece": m["ece"], "n": m["n"]},
        "fitted": fitted_info(head),
        "seconds": round(seconds, 3),
    }


_WORKER_DATA: Data | None = None  # set before the worker processes fork; never pickled


def _score_in_worker(head_name: str, params: dict[str, Any]) -> dict[str, Any]:
    logging.getLogger().setLevel(logging.WARNING)
    return score_trial(_WORKER_DATA, head_name, params)


def plan_jobs(data: Data, head_name: str, n_trials: int, jobs: int | None) -> tuple[int, str]:
    """How many trials at once, and how: ``(1, "serial")``, or ``(n, "process")`` (forked workers that
    share the loaded features; each needs about one training split's working copy, or TensorFlow)."""
    if n_trials <= 1 or jobs == 1:
        return 1, "serial"
    if data.streamed or not hasattr(os, "fork") or "tensorflow" in sys.modules:
        return 1, "serial"  # an open HDF5 file, or TensorFlow's threads, must not cross a fork
    cores = os.cpu_count() or 1
    n_train = len(data.indices["train"])
    per_trial = KERAS_TRIAL_BYTES if head_name in KERAS_HEADS else 3 * n_train * data.cache_info["dim"] * 4
    by_memory = max(1, int(_memory_budget() // max(per_trial, 1)))
    n = min(jobs or cores, cores if jobs is None else jobs, n_trials, by_memory)
    return (n, "process") if n > 1 else (1, "serial")


def _run_trials(
    data: Data,
    head_name: str,
    todo: list[tuple[Trial, dict[str, Any]]],
    jobs: int,
    executor: str,
    done: Callable[[Trial, dict[str, Any]], None],
) -> None:
    """Fit every ``(trial, params)`` and call ``done(trial, result)`` in this process as each ends."""
    if executor == "serial" or jobs <= 1:
        for trial, params in todo:
            done(trial, score_trial(data, head_name, params))
        return
    global _WORKER_DATA
    _WORKER_DATA = data
    if executor == "thread":
        pool = cf.ThreadPoolExecutor(jobs)
    else:
        pool = cf.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init, initargs=(os.getpid(),)
        )
    try:
        futures = {pool.submit(_score_in_worker, head_name, params): trial for trial, params in todo}
        for fut in cf.as_completed(futures):
            done(futures[fut], fut.result())
    except BaseException:
        # Ctrl-C or an error: trials already journaled stay; running ones are stopped, not awaited.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        _WORKER_DATA = None


def _worker_init(parent: int) -> None:
    """In a worker process: Ctrl-C reaches the whole process group, and the parent alone handles it;
    a worker dies with its parent (Linux), so a killed sweep leaves no worker holding the folder's lock."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


# -- the journal -----------------------------------------------------------------------------------


def _finite_numbers(d: Any, keys: Sequence[str]) -> bool:
    return isinstance(d, dict) and all(
        isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool) and math.isfinite(d[k]) for k in keys
    )


def read_journal(path: Path, head_name: str) -> dict[str, dict[str, Any]]:
    """Finished trials by key. Lines that are torn (a kill mid-write) or not trials of this head are
    skipped; every value kept is checked (option names from the head, finite numbers)."""
    out: dict[str, dict[str, Any]] = {}
    allowed = set(head_params(head_name))
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise SweepError(f"Cannot read {path}: {err.strerror or err}.") from None
    skipped = 0
    for raw in lines[1:]:
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            skipped += 1
            continue
        ok = (
            isinstance(rec, dict)
            and rec.get("kind") == TRIAL_KIND
            and rec.get("head") == head_name
            and isinstance(rec.get("key"), str)
            and isinstance(rec.get("params"), dict)
            and set(rec["params"]) <= allowed
            and all(v is None or isinstance(v, (int, float, str)) for v in rec["params"].values())
            and _finite_numbers(rec.get("val"), ("accuracy", "log_loss", "ece"))
            and isinstance(rec.get("seconds"), (int, float))
        )
        if ok:
            out[rec["key"]] = rec
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d line(s) that are not finished trials (a sweep killed mid-write)", path, skipped)
    return out


_KEPT = "The trials journaled before are kept: free some space and run the same command to resume."


def _append(path: Path, record: Mapping[str, Any]) -> None:
    """Append one line and make it durable; a torn last line (a kill mid-write) is ended first."""
    line = json.dumps(record, allow_nan=False, separators=(",", ":")).encode() + b"\n"
    try:
        with open(path, "ab+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(path, "journaling a finished trial", _KEPT) from None
        raise


def start_journal(path: Path, header: Mapping[str, Any]) -> None:
    """A journal holding ``header`` alone, written beside and renamed into place (never torn or empty)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(json.dumps(header, allow_nan=False, separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(
                path, "starting the sweep journal", "Nothing was kept: free some space and run again."
            ) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


IDENTITY = ("fingerprint_digest", "rows", "content")
"""What a journal's header must share with the cache for its trials to be reused."""


def cache_identity(cache) -> dict[str, Any]:
    """The cache a sweep's trials belong to: its settings' digest, rows, and a SHA-256 of its contents
    (every feature row as stored, the labels, the paths, the views); one read of the file."""
    h = hashlib.sha256()
    h.update(json.dumps([cache.fingerprint_digest, len(cache), cache.class_names, cache.paths]).encode())
    h.update(np.asarray(cache.labels, dtype="<i8").tobytes())
    if cache.views is not None:
        h.update(np.asarray(cache.views, dtype="i1").tobytes())
    for _, block in cache.iter_chunks(dtype=cache.dtype):
        h.update(np.ascontiguousarray(block).tobytes())
    return {"fingerprint_digest": cache.fingerprint_digest, "rows": len(cache), "content": h.hexdigest()}
