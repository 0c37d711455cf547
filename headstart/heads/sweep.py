"""Hyperparameter sweeps of one head on one cache: trials scored on validation, the best kept as a run.

A sweep loads the cache once (`headstart.heads.prepare.prepare`), fits one head per setting
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
cache, split and calibration are). The cache is known by its settings' digest, its row count
and a SHA-256 of its contents (features, labels, paths): two caches made with the same settings
never share trials. The journal's first line names that cache; a journal of another cache is
discarded (a warning says so) and a new one started. The header is written beside and renamed
into place, so a full disk or a kill never leaves a journal without it (an empty one, left by
older versions, is taken as an unstarted sweep); a full disk is one `DiskFullError` line, and the
trials journaled before it are kept. The final files are built in a hidden sibling
folder and swapped in whole (`headstart.heads.rundir.staged_result`); until then the folder is an
unfinished sweep (a journal alone) or the previous finished sweep with a longer journal.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.cache import open_cache
from headstart.disk import disk_full, is_disk_full
from headstart.errors import HeadError, RunError, SweepError
from headstart.heads.prepare import calibration_rows_args, prepare
from headstart.heads.registry import check_learns, head_class, make_head
from headstart.heads.rundir import (
    BEST,
    JOURNAL,
    JOURNAL_KIND,
    SWEEP_JSON,
    SWEEP_KIND,
    busy_error,
    check_out,
    journal_header,
    manifest,
    staged_result,
    versions,
    write_json,
)
from headstart.heads.split import DEFAULT_CALIBRATION_FRACTION, SplitSpec
from headstart.heads.sweep_space import _defaults, grid_settings, random_settings
from headstart.heads.training import TrainResult, _fit_one
from headstart.heads.trials import (
    _KEPT,
    IDENTITY,
    KERAS_HEADS,
    TRIAL_KIND,
    Trial,
    _append,
    _digest,
    _run_trials,
    cache_identity,
    plan_jobs,
    read_journal,
    start_journal,
)
from headstart.locking import exclusive_lock, lock_path_for
from headstart.settings.config import check_cache_settings

log = logging.getLogger(__name__)

SWEEP_FORMAT = 1
TRIALS_CSV = "trials.csv"
MAX_TRIALS = 10_000


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
    check_cache_settings(cache_path)  # refuse settings this version does not know, before any work
    from headstart.heads.calibration import check_calibration

    t_start = time.perf_counter()
    out = Path(out)
    grid, ranges, fixed = dict(grid or {}), dict(ranges or {}), dict(params or {})
    calibrate = check_calibration(calibrate)
    head_class(head)
    check_learns(head, "a sweep")
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
        identity = cache_identity(cache)
        context = _digest(
            {
                "head": head,
                "fingerprint": data.cache_info["fingerprint_digest"],
                "rows": data.cache_info["rows"],
                "content": identity["content"],
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
            header = {"kind": JOURNAL_KIND, "format": SWEEP_FORMAT, "head": head, "cache": data.cache_info["path"]}
            header.update(identity)
            earlier = journal_header(journal)
            if earlier is None:  # a new or empty folder, or a journal whose header never reached the disk
                out.mkdir(exist_ok=True)
                start_journal(journal, header)
            elif any(earlier.get(k) != identity[k] for k in IDENTITY):
                whose = (
                    f"the trials of another cache ({earlier.get('cache')})"
                    if "content" in earlier
                    else "trials of a cache whose contents it did not record (an older headstart)"
                )
                log.warning("%s holds %s; they are discarded and a new journal started", journal, whose)
                start_journal(journal, header)
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

            with _results_disk_full(journal), staged_result(out, SWEEP_KIND) as tmp:
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


@contextlib.contextmanager
def _results_disk_full(journal: Path):
    """A full disk while the final files are written: one line; the journal keeps every trial."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(journal.parent, "writing the sweep's results", _KEPT) from None
        raise


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
