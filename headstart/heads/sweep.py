"""Hyperparameter sweeps of one head on one cache: trials scored on validation, the best kept as a run.

A sweep loads the cache once (`headstart.heads.training.prepare`), fits one head per setting
(a grid, or ``trials`` settings drawn at random from values and ranges) on the training split,
and scores each on the validation split only. The test split is read once, at the end, by the
best trial, refitted and written as a normal run folder (``OUT/best``). Successive halving
(Keras heads) first trains every setting for a few epochs and continues the best third.

The sweep folder::

    journal.jsonl   one line per finished trial, appended (and fsynced) as each ends
    sweep.json      kind, head, cache, split, search, every trial ranked, the best; a manifest
    trials.csv      the ranked table;  sweep-PARAM.png  validation accuracy against each parameter
    best/           the best trial as a run folder (run.json, head, metrics, plots)

Safety. One writer per folder (its lock is held for the whole sweep). Each finished trial is
appended to the journal inside the locked folder, so a sweep killed at any moment keeps its
finished trials, and the same command skips them (a trial is the same when its head, options,
cache fingerprint, split and calibration are). The final files are built in a hidden sibling
folder and swapped in whole (`headstart.heads.rundir.staged_result`); until then the folder is an
unfinished sweep (a journal alone) or the previous finished sweep with a longer journal.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import datetime as _dt
import hashlib
import inspect
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.cache import open_cache
from headstart.errors import HeadError, RunError, SweepError
from headstart.heads import metrics as M
from headstart.heads.base import fitted_info
from headstart.heads.registry import head_class, head_params, head_params_json, make_head
from headstart.heads.rundir import (
    BEST,
    JOURNAL,
    JOURNAL_KIND,
    SWEEP_JSON,
    SWEEP_KIND,
    busy_error,
    check_out,
    manifest,
    staged_result,
    versions,
    write_json,
)
from headstart.heads.split import DEFAULT_CALIBRATION_FRACTION, SplitSpec
from headstart.heads.training import (
    Data,
    TrainResult,
    _fit_one,
    _memory_budget,
    calibration_rows_args,
    predict_split,
    prepare,
)
from headstart.locking import exclusive_lock, lock_path_for

log = logging.getLogger(__name__)

SWEEP_FORMAT = 1
TRIAL_KIND = "headstart-trial"
TRIALS_CSV = "trials.csv"
KERAS_HEADS = ("softmax", "mlp")
KERAS_TRIAL_BYTES = 700 << 20  # TensorFlow and a small model in a worker process
MAX_TRIALS = 10_000

# What a random search draws from when the user gives no values or ranges (lo, hi, log).
DEFAULT_SPACE: dict[str, dict[str, tuple[float, float, bool]]] = {
    "softmax": {"learning_rate": (1e-4, 1e-2, True)},
    "mlp": {"hidden_units": (64, 1024, True), "dropout": (0.0, 0.7, False), "learning_rate": (1e-4, 1e-2, True)},
    "logreg": {"C": (1e-4, 10.0, True)},
    "svm": {"C": (1e-5, 1.0, True)},
    "knn": {"k": (1, 50, True)},
}
# Options whose default (None, "auto") does not say their type.
_TYPES = {"C": float, "k": int, "batch_size": int, "class_weight": "class_weight"}


# -- parsing the search ------------------------------------------------------------------------


def _defaults(head: str) -> dict[str, Any]:
    sig = inspect.signature(head_class(head).__init__)
    return {n: p.default for n, p in sig.parameters.items() if n != "self"}


def param_type(head: str, name: str):
    """The type a sweep parses values of option ``name`` to: int, float, bool, or "class_weight"."""
    defaults = _defaults(head)
    if name not in defaults:
        raise HeadError(f"Head {head!r} takes no option {name!r}. It takes: {', '.join(head_params(head))}.")
    if name in _TYPES:
        return _TYPES[name]
    d = defaults[name]
    if isinstance(d, bool):
        return bool
    if isinstance(d, int) or name == "random_state":
        return int
    if isinstance(d, float):
        return float
    raise HeadError(f"Expected an option with one number per trial. Received: {name!r}, which a sweep cannot vary.")


def parse_value(head: str, name: str, text: str) -> Any:
    kind = param_type(head, name)
    text = text.strip()
    try:
        if kind == "class_weight":
            if text not in ("none", "balanced"):
                raise ValueError
            return None if text == "none" else "balanced"
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        what = {int: "integers", float: "numbers", bool: "true or false", "class_weight": "none or balanced"}[kind]
        raise HeadError(f"Expected {name} values as {what}. Received: {text!r}.") from None


def _name_and_rest(item: str, option: str) -> tuple[str, str]:
    name, sep, rest = item.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise HeadError(f"Expected {option} NAME=... (e.g. {option} learning_rate=1e-3,3e-4). Received: {item!r}.")
    return name.strip(), rest


def parse_grid(head: str, items: Sequence[str]) -> dict[str, list[Any]]:
    """``["hidden_units=128,256", "dropout=0.2"]`` → ``{"hidden_units": [128, 256], "dropout": [0.2]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, rest = _name_and_rest(item, "--grid")
        if name in grid:
            raise HeadError(f"Expected each option once in --grid. Received: {name} twice.")
        values = [parse_value(head, name, v) for v in rest.split(",") if v.strip()]
        grid[name] = list(dict.fromkeys(values))
    return grid


def parse_ranges(head: str, items: Sequence[str]) -> dict[str, tuple[float, float, bool]]:
    """``["learning_rate=1e-4:1e-2:log"]`` → ``{"learning_rate": (1e-4, 1e-2, True)}``."""
    ranges = {}
    for item in items:
        name, rest = _name_and_rest(item, "--range")
        parts = rest.split(":")
        log_scale = len(parts) == 3 and parts[2].strip() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log_scale):
            raise HeadError(f"Expected --range NAME=LOW:HIGH or NAME=LOW:HIGH:log. Received: {item!r}.")
        kind = param_type(head, name)
        if kind not in (int, float):
            raise HeadError(f"Expected a numeric option for --range. Received: {name!r}; use --grid for it.")
        lo, hi = (parse_value(head, name, p) for p in parts[:2])
        if not lo < hi or (log_scale and lo <= 0):
            raise HeadError(
                f"Expected LOW < HIGH{' and LOW > 0 (log)' if log_scale else ''} in --range. Received: {item!r}."
            )
        ranges[name] = (lo, hi, log_scale)
    return ranges


def grid_settings(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def random_settings(
    head: str, grid: Mapping[str, Sequence[Any]], ranges: Mapping[str, tuple[float, float, bool]], n: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` distinct settings: a value of each ``grid`` list, a draw from each range (log-uniform
    where marked; integer options rounded). With neither, the head's `DEFAULT_SPACE`."""
    if not grid and not ranges:
        ranges = DEFAULT_SPACE[head]
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for _ in range(50 * n):
        s = {name: values[int(rng.integers(len(values)))] for name, values in grid.items()}
        for name, (lo, hi, log_scale) in ranges.items():
            v = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log_scale else float(rng.uniform(lo, hi))
            s[name] = int(round(v)) if param_type(head, name) is int else float(f"{v:.4g}")
        key = json.dumps(s, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(s)
        if len(out) == n:
            break
    return out


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


def _append(path: Path, record: Mapping[str, Any]) -> None:
    """Append one line and make it durable; a torn last line (a kill mid-write) is ended first."""
    line = json.dumps(record, allow_nan=False, separators=(",", ":")).encode() + b"\n"
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = b"\n" + line
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


# -- the sweep ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    out: Path
    trials: list[dict[str, Any]]  # ranked, best first
    best: TrainResult
    skipped: int  # trials taken from the journal
    seconds: float
    jobs: int
    executor: str


RANK_BY = ("accuracy", "log_loss")


def _rank_key(rec: Mapping[str, Any], by: str = "accuracy") -> tuple:
    """Later halving rungs first; then validation accuracy (ties: lower log loss), or log loss alone."""
    if by == "log_loss":
        return (-rec.get("rung", 0), rec["val"]["log_loss"], -rec["val"]["accuracy"])
    return (-rec.get("rung", 0), -rec["val"]["accuracy"], rec["val"]["log_loss"])


def sweep(
    cache_path: str | os.PathLike,
    head: str,
    out: str | os.PathLike,
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    ranges: Mapping[str, tuple[float, float, bool]] | None = None,
    trials: int | None = None,
    split: SplitSpec = SplitSpec(),
    params: Mapping[str, Any] | None = None,
    calibrate: str | None = None,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    calibration_rows: str = "split",
    halving: bool = False,
    eta: int = 3,
    jobs: int | None = None,
    executor: str | None = None,
    plots: bool = True,
    stream: bool | None = None,
    search_seed: int = 0,
    rank_by: str = "accuracy",
    on_trial: Callable[[dict[str, Any], int, int], None] | None = None,
) -> SweepResult:
    """Search ``head``'s options on ``cache_path``; write the sweep folder ``out`` (see the module doc).

    ``grid`` (option → values) is searched whole, unless ``trials`` asks for that many random
    settings (from ``grid``'s values and ``ranges``). ``params`` are options shared by every trial.
    ``halving`` (softmax, mlp) trains all settings for a few epochs first and continues the best
    ``1/eta``. ``jobs`` trials run at once (default: as many as cores and memory allow).
    ``rank_by`` orders the trials: validation ``accuracy`` (ties broken by log loss) or ``log_loss``
    (finer on a small validation split). ``on_trial(record, done, total)`` is called as each trial ends.
    """
    from headstart.heads.calibration import check_calibration

    t_start = time.perf_counter()
    out = Path(out)
    grid, ranges, fixed = dict(grid or {}), dict(ranges or {}), dict(params or {})
    calibrate = check_calibration(calibrate)
    head_class(head)
    if rank_by not in RANK_BY:
        raise HeadError(f"Expected --rank-by among {', '.join(RANK_BY)}. Received: {rank_by!r}.")
    both = sorted(set(fixed) & (set(grid) | set(ranges)))
    if both:
        raise HeadError(f"Expected each option either fixed or searched. Received: {', '.join(both)} as both.")
    if trials is not None:
        if not (isinstance(trials, int) and 1 <= trials <= MAX_TRIALS):
            raise HeadError(f"Expected --trials between 1 and {MAX_TRIALS}. Received: {trials!r}.")
        settings = random_settings(head, grid, ranges, trials, search_seed)
        mode = "random"
    else:
        if ranges:
            raise HeadError("Expected --trials N with --range (a range is sampled). Received: --range alone.")
        if not grid:
            raise HeadError("Expected at least one --grid NAME=V1,V2 (or --trials N). Received: neither.")
        settings = grid_settings(grid)
        mode = "grid"
        if len(settings) > MAX_TRIALS:
            raise HeadError(f"Expected at most {MAX_TRIALS} grid points. Received: {len(settings)}.")
    if halving and head not in KERAS_HEADS:
        raise HeadError(f"Expected a Keras head (softmax, mlp) for --halving. Received: {head}.")
    if halving and not (isinstance(eta, int) and eta >= 2):
        raise HeadError(f"Expected --eta an integer of 2 or more. Received: {eta!r}.")
    if halving and "epochs" in grid:
        raise HeadError("Expected --halving to set the epochs itself. Received: --grid epochs too.")
    for s in settings:  # every setting is checked before the cache is read
        make_head(head, **{**fixed, **s})
    check_out(out, SWEEP_KIND)

    with open_cache(cache_path) as cache:
        # With --calibrate, every trial trains without the calib rows, as the best run does.
        calibration, crossfit = calibration_rows_args(calibrate, calibration_rows, calibration_fraction)
        rows = {"calibration": calibration, "crossfit": crossfit} if calibrate else {}
        data = prepare(cache, split, stream, **rows)
        if not len(data.indices["val"]):
            raise SweepError(
                "Expected validation pictures to score the trials on. Received: an empty validation split; "
                "give it a share with --split (e.g. 0.7,0.15,0.15)."
            )
        if data.streamed and head in ("logreg", "svm", "knn"):
            raise RunError(
                f"The {head} head needs the training rows in memory, and {data.cache_path} is too "
                "large for the memory available. Sweep softmax or mlp, which stream from the file."
            )
        context = _digest(
            {
                "head": head,
                "fingerprint": data.cache_info["fingerprint_digest"],
                "rows": data.cache_info["rows"],
                "split": split.to_dict(),
                "calibrate": calibrate,
                **({"calibration_fraction": calibration_fraction} if calibrate and not crossfit else {}),
                **({"calibration_rows": "crossfit"} if crossfit else {}),
            }
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(lock_path_for(out), busy_error(out)):
            check_out(out, SWEEP_KIND)
            journal = out / JOURNAL
            if not out.exists() or not any(out.iterdir()):
                out.mkdir(exist_ok=True)
                _append(
                    journal,
                    {
                        "kind": JOURNAL_KIND,
                        "format": SWEEP_FORMAT,
                        "head": head,
                        "cache": data.cache_info["path"],
                        "fingerprint_digest": data.cache_info["fingerprint_digest"],
                    },
                )
            finished = read_journal(journal, head)

            all_trials: list[Trial] = []
            counts = {"skipped": 0, "done": 0}

            def run_rung(rung_trials: list[Trial], total: int) -> None:
                todo = []
                for t in rung_trials:
                    key = t.key(context, head, fixed)
                    if key in finished:
                        t.record = {**finished[key], "rung": t.rung}
                        counts["skipped"] += 1
                    else:
                        todo.append((t, {**fixed, **t.params}))
                if counts["skipped"]:
                    log.info("%d trial(s) already finished in %s; skipped", counts["skipped"], journal)
                n_jobs, how = plan_jobs(data, head, len(todo), jobs)
                if executor and n_jobs > 1:
                    how = executor
                if todo:
                    plan.update(jobs=n_jobs, how=how)

                def done(t: Trial, result: dict[str, Any]) -> None:
                    t.record = {
                        "kind": TRIAL_KIND,
                        "head": head,
                        "key": t.key(context, head, fixed),
                        "context": context,
                        "params": t.params,
                        "rung": t.rung,
                        **result,
                        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    }
                    _append(journal, t.record)
                    counts["done"] += 1
                    if on_trial:
                        on_trial(t.record, counts["done"] + counts["skipped"], total)

                _run_trials(data, head, todo, n_jobs, how, done)

            plan = {"jobs": 1, "how": "serial"}  # how trials ran (with halving: the last rung that fitted any)
            if not halving:
                all_trials = [Trial(dict(s)) for s in settings]
                run_rung(all_trials, len(all_trials))
            else:
                all_trials = _halving(settings, fixed, head, eta, run_rung, rank_by)
            ranked = sorted((t.record for t in all_trials), key=lambda r: _rank_key(r, rank_by))
            best = ranked[0]
            n_jobs, how = plan["jobs"], plan["how"]

            with staged_result(out, SWEEP_KIND) as tmp:
                best_params = {**fixed, **best["params"]}
                result = _fit_one(
                    data,
                    head,
                    best_params,
                    tmp / BEST,
                    out / BEST,
                    plots,
                    calibrate,
                    extra={"sweep": {"rank": 1, "params": best["params"], "of": len(ranked)}},
                )
                rows = [{"rank": i + 1, **rec} for i, rec in enumerate(ranked)]
                _write_trials_csv(rows, tmp / TRIALS_CSV)
                searched = list(dict.fromkeys(k for r in rows for k in r["params"]))
                if plots:
                    from headstart.heads import plots as P

                    for name in searched:
                        P.plot_sweep_param(rows, name, tmp / f"sweep-{name}.png", head=head)
                seconds = time.perf_counter() - t_start
                files = manifest(tmp)
                shutil.copyfile(journal, tmp / JOURNAL)
                write_json(
                    tmp / SWEEP_JSON,
                    {
                        "kind": SWEEP_KIND,
                        "format": SWEEP_FORMAT,
                        "head": head,
                        "cache": data.cache_info,
                        "split": {**split.to_dict(), "counts": data.counts},
                        "class_names": data.class_names,
                        "calibrate": calibrate,
                        "fixed_params": fixed,
                        "search": {
                            "mode": mode,
                            "grid": grid,
                            "ranges": {k: list(v) for k, v in ranges.items()},
                            "trials": trials,
                            "seed": search_seed,
                            "halving": halving,
                            "eta": eta if halving else None,
                            "searched": searched,
                            "rank_by": rank_by,
                        },
                        "jobs": n_jobs,
                        "executor": how,
                        "seconds": round(seconds, 3),
                        "skipped": counts["skipped"],
                        "trials": rows,
                        "best": {
                            "params": best["params"],
                            "val": best["val"],
                            "run": BEST,
                            "test": {k: result.metrics["test"].get(k) for k in ("accuracy", "log_loss", "ece", "n")},
                        },
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "versions": versions(),
                        "files": files,
                    },
                )
    return SweepResult(out, rows, result, counts["skipped"], time.perf_counter() - t_start, n_jobs, how)


def _halving(settings, fixed, head, eta, run_rung, rank_by: str = "accuracy") -> list[Trial]:
    """Successive halving: every setting for ``max_epochs / eta**(R-1)`` epochs, then the best
    ``1/eta`` for ``eta`` times more, ... up to the head's ``epochs``. Each rung trains from the start
    with the same seed (a longer run of the same setting repeats the shorter one, then goes on)."""
    max_epochs = int(fixed.get("epochs", _defaults(head)["epochs"]))
    n_rungs = max(1, int(math.floor(math.log(len(settings), eta))) + 1)
    survivors = [dict(s) for s in settings]
    kept: dict[str, Trial] = {}
    for rung in range(n_rungs):
        epochs = max(1, int(round(max_epochs * eta ** (rung - (n_rungs - 1)))))
        trials = [Trial({**s, "epochs": epochs}, rung=rung) for s in survivors]
        run_rung(trials, len(trials))
        for t in trials:
            kept[json.dumps({k: v for k, v in t.params.items() if k != "epochs"}, sort_keys=True)] = t
        ranked = sorted(trials, key=lambda t: _rank_key(t.record, rank_by))
        survivors = [{k: v for k, v in t.params.items() if k != "epochs"} for t in ranked[: max(1, len(ranked) // eta)]]
        log.info("halving rung %d: %d settings at %d epochs; %d continue", rung, len(trials), epochs, len(survivors))
    return list(kept.values())


def _write_trials_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", *names, "rung", "val_accuracy", "val_log_loss", "val_ece", "seconds"])
        for r in rows:
            w.writerow(
                [
                    r["rank"],
                    *(r["params"].get(n, "") for n in names),
                    r.get("rung", 0),
                    r["val"]["accuracy"],
                    r["val"]["log_loss"],
                    r["val"]["ece"],
                    r["seconds"],
                ]
            )
