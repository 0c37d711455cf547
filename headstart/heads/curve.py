"""Learning curves from a cache: test accuracy and log loss against labelled training pictures per class.

For each size (1, 2, 4, ... pictures a class, then the whole training split) and each of ``draws``
random class-balanced draws, one head is fitted on the drawn training rows and scored on the fixed
test split. The validation split is the same whole split at every point (the head's own choices,
early stopping or the C path, are made on it), so the curve answers how many labelled *training*
pictures a head needs. The last point fits the whole training split once, exactly as `train`
does: same rows, same options, same seed, same numbers.

Each finished point is appended to ``curve-journal.jsonl`` in the output folder, keyed by the
cache, the head's options, the split, the size and the draw: a curve killed at any moment keeps
its finished points, and the same command fits only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.cache import open_cache
from headstart.errors import HeadError
from headstart.heads import metrics as M
from headstart.heads.prepare import prepare
from headstart.heads.registry import check_learns, head_params_json, make_head
from headstart.heads.sources import ArraySource
from headstart.heads.split import SplitSpec
from headstart.heads.training import predict_split

log = logging.getLogger(__name__)

ALL = "all"
CURVE_KIND = "headstart-curve"
JOURNAL = "curve-journal.jsonl"


@dataclass(frozen=True)
class Point:
    """One fit of the curve: ``per_class`` pictures a class (or ``"all"``), draw ``draw``."""

    cache: str
    per_class: int | str
    draw: int
    n_train: int
    accuracy: float
    log_loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "per_class": self.per_class,
            "draw": self.draw,
            "n_train": self.n_train,
            "accuracy": self.accuracy,
            "log_loss": self.log_loss,
            "seconds": self.seconds,
        }


def sizes_for(train_counts: Sequence[int], largest: int | None = None) -> list[int | str]:
    """1, 2, 4, ... pictures a class while every class has that many training pictures, then all."""
    smallest = min(c for c in train_counts if c > 0)
    sizes: list[int | str] = []
    n = 1
    while n < smallest and (largest is None or n <= largest):
        sizes.append(n)
        n *= 2
    return [*sizes, ALL]


def draw_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` rows of each class of ``labels``, drawn without replacement; sorted positions."""
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def fit_point(data, head_name: str, params: Mapping[str, Any], per_class: int | str, draw: int, seed: int) -> dict:
    """Fit one head on a draw of the training split (all of it for ``"all"``) and score it on test."""
    train = data.sources["train"]
    if per_class == ALL:
        source = train
    else:
        rows = draw_rows(train.labels, int(per_class), seed=hash_seed(seed, per_class, draw))
        source = ArraySource(train.array(), train.labels, rows=rows)
    head = make_head(head_name, **params)
    val = data.sources["val"] if len(data.indices["val"]) else None
    t0 = time.perf_counter()
    quiet = logging.getLogger("headstart.heads.keras_heads")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a tiny draw ends early by design: no warning per fit
    try:
        head.fit_source(source, val)
    except ValueError as err:
        raise HeadError(f"Training the {head_name} head on {per_class} pictures a class failed: {err}") from err
    finally:
        quiet.setLevel(level)
    seconds = time.perf_counter() - t0
    test = data.sources["test"]
    proba = predict_split(head, test, len(data.class_names))
    m = M.split_metrics(test.labels, proba, data.class_names)
    return {"n_train": len(source), "accuracy": m["accuracy"], "log_loss": m["log_loss"], "seconds": seconds}


def hash_seed(seed: int, per_class: int | str, draw: int) -> int:
    return int(_digest({"seed": seed, "per_class": per_class, "draw": draw}), 16) % (2**32)


def content_digest(cache) -> str:
    """What the rows of a cache are, beyond its settings: two caches made with the same settings
    (the same fingerprint) from other pictures or labels differ here. Paths, labels, the pictures'
    SHA-256 where recorded, and the first and last rows' features."""
    h = hashlib.sha256()
    h.update("\n".join(cache.paths).encode("utf-8", "surrogateescape"))
    h.update(np.asarray(cache.labels, np.int64).tobytes())
    if cache.sha256 is not None:
        h.update("\n".join(cache.sha256).encode("ascii", "replace"))
    n = len(cache)
    h.update(cache.read(0, 1).tobytes() + cache.read(n - 1, n).tobytes())
    return h.hexdigest()[:16]


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """Finished points by key; a torn last line (a kill while appending) is ignored."""
    done: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return done
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(rec, dict)
            and isinstance(rec.get("key"), str)
            and all(isinstance(rec.get(k), (int, float)) and math.isfinite(rec[k]) for k in ("accuracy", "log_loss"))
        ):
            done[rec["key"]] = rec
    return done


def append(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def curve_points(
    cache_path: str | os.PathLike,
    head: str,
    journal: Path,
    *,
    split: SplitSpec,
    params: Mapping[str, Any],
    draws: int,
    largest: int | None = None,
    jobs: int = 1,
    on_point: Callable[[dict[str, Any], int, int], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every point of one cache's curve (taken from ``journal`` where already finished), and the
    cache's description. Points are fitted smallest first, so an early stop still draws a curve."""
    with open_cache(cache_path) as cache:
        data = prepare(cache, split, stream=False)
        if not len(data.indices["test"]):
            raise HeadError("Expected test pictures to score the curve on. Received: an empty test split; see --split.")
        counts = [data.counts["train"][c] for c in data.class_names]
        sizes = sizes_for(counts, largest)
        options = head_params_json(make_head(head, **params))
        context = {
            "fingerprint": data.cache_info["fingerprint_digest"],
            "rows": data.cache_info["rows"],
            "content": content_digest(cache),
            "head": head,
            "options": options,
            "split": split.to_dict(),
        }
        finished = read_journal(journal)
        plan = [(s, d) for s in sizes for d in (range(1) if s == ALL else range(draws))]
        keys = [_digest({**context, "per_class": size, "draw": draw}) for size, draw in plan]
        by_key = {k: finished[k] for k in keys if k in finished}
        reused = len(by_key)
        todo = [(k, size, draw) for k, (size, draw) in zip(keys, plan) if k not in by_key]

        def done(key: str, size: int | str, draw: int, result: Mapping[str, Any]) -> None:
            rec = {"key": key, "cache": str(data.cache_path), "per_class": size, "draw": draw, **result}
            append(journal, rec)  # in this process only: one writer of the journal
            by_key[key] = rec
            if on_point:
                on_point(rec, len(by_key), len(plan))

        _fit_all(data, head, params, todo, split.seed, jobs, done)
        points = [by_key[k] for k in keys]
        info = {
            "path": str(data.cache_path),
            "fingerprint_digest": data.cache_info["fingerprint_digest"],
            "backbone": cache.fingerprint.get("backbone"),
            "layer": cache.fingerprint.get("layer"),
            "train_counts": dict(zip(data.class_names, counts)),
            "sizes": sizes,
            "from_journal": reused,
        }
        return info, points


_WORKER: tuple | None = None  # (data, head, params, seed), set before the workers fork; never pickled


def _fit_in_worker(size: int | str, draw: int) -> dict[str, Any]:
    data, head, params, seed = _WORKER
    return fit_point(data, head, params, size, draw, seed)


def _fit_all(data, head: str, params, todo, seed: int, jobs: int, done) -> None:
    """Fit every ``(key, size, draw)`` and call ``done`` in this process as each ends: in forked worker
    processes that share the loaded features when ``jobs > 1`` allows it, else one after another.
    TensorFlow's threads must not cross a fork, so the Keras heads (and any process that has
    loaded TensorFlow) fit serially."""
    import sys

    forkable = hasattr(os, "fork") and "tensorflow" not in sys.modules and not data.streamed
    if jobs <= 1 or len(todo) <= 1 or not forkable:
        for key, size, draw in todo:
            done(key, size, draw, fit_point(data, head, params, size, draw, seed))
        return
    import concurrent.futures as cf
    import multiprocessing

    global _WORKER
    _WORKER = (data, head, dict(params), seed)
    pool = cf.ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context("fork"))
    try:
        futures = {pool.submit(_fit_in_worker, size, draw): (key, size, draw) for key, size, draw in todo}
        for fut in cf.as_completed(futures):
            done(*futures[fut], fut.result())
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()  # Ctrl-C or an error: finished points are journaled, the rest stop now
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        _WORKER = None


def summarise(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (standard deviation, min, max) of accuracy and log loss at each size."""
    by_size: dict[Any, list[Mapping[str, Any]]] = {}
    for p in points:
        by_size.setdefault(p["per_class"], []).append(p)
    rows = []
    for size, ps in by_size.items():
        acc = np.array([p["accuracy"] for p in ps])
        loss = np.array([p["log_loss"] for p in ps])
        rows.append(
            {
                "per_class": size,
                "n_train": int(np.mean([p["n_train"] for p in ps])),
                "draws": len(ps),
                "accuracy_mean": float(acc.mean()),
                "accuracy_std": float(acc.std()),
                "accuracy_min": float(acc.min()),
                "accuracy_max": float(acc.max()),
                "log_loss_mean": float(loss.mean()),
                "log_loss_std": float(loss.std()),
            }
        )
    return rows


@dataclass(frozen=True)
class CurveResult:
    out: Path
    caches: list[dict[str, Any]]
    rows: list[dict[str, Any]]  # one per cache and size: mean and spread
    skipped: int  # points taken from the journal
    seconds: float


OUR_FILES = {JOURNAL, "curve.json", "curve.png"}


def _check_out(out: Path) -> None:
    """``out`` must be new, empty, or hold only what a curve writes (its journal, json and plot)."""
    from headstart.errors import RunError

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RunError(
            f"Expected --out to be a folder. Received: {out} ({'a link' if out.is_symlink() else 'a file'})."
        )
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUR_FILES or not p.is_file() or p.is_symlink())
    kind = None
    if (out / "curve.json").is_file():
        try:
            kind = json.loads((out / "curve.json").read_text()).get("kind")
        except (ValueError, AttributeError, OSError):
            kind = "unreadable"
    if foreign or kind not in (None, CURVE_KIND):
        raise RunError(
            f"Expected --out to be a new or empty folder, or an earlier headstart curve. Received: {out}, which "
            f"holds {', '.join(foreign[:3]) or 'a curve.json headstart did not write'}; choose another --out. "
            "Nothing was deleted."
        )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def learning_curve(
    caches: Sequence[str | os.PathLike],
    head: str = "logreg",
    out: str | os.PathLike = "runs/curve",
    *,
    split: SplitSpec = SplitSpec(),
    params: Mapping[str, Any] | None = None,
    draws: int = 5,
    largest: int | None = None,
    plots: bool = True,
    jobs: int = 1,
    on_point: Callable[[dict[str, Any], int, int], None] | None = None,
) -> CurveResult:
    """Learning curves of ``head`` on each cache into ``out`` (``curve.json``, ``curve.png`` and the
    journal of finished points, which makes the same command resume). ``largest`` caps the sizes
    drawn (pictures a class) before the whole training split."""
    from headstart.errors import RunError
    from headstart.locking import exclusive_lock, lock_path_for

    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise HeadError(f"Expected --draws of 1 or more. Received: {draws!r}.")
    if largest is not None and (isinstance(largest, bool) or not isinstance(largest, int) or largest < 1):
        raise HeadError(f"Expected --largest of 1 or more pictures a class. Received: {largest!r}.")
    if not caches:
        raise HeadError("Expected at least one cache. Received: none.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise HeadError(f"Expected --jobs of 1 or more. Received: {jobs!r}.")
    params = dict(params or {})
    params.setdefault("random_state", split.seed)
    make_head(head, **params)  # bad options fail before any cache is read
    check_learns(head, "a learning curve")
    from headstart.settings.config import check_cache_settings

    check_cache_settings(*caches)  # every cache opens, validates and names known settings before
    for cache_path in caches:  # anything is written
        with open_cache(cache_path):
            pass
    out = Path(out)
    _check_out(out)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    busy = RunError(f"Another headstart process is writing {out}. Wait for it to finish, or choose another --out.")
    with exclusive_lock(lock_path_for(out), busy):
        _check_out(out)
        out.mkdir(exist_ok=True)
        journal = out / JOURNAL
        infos, rows, all_points = [], [], []
        for cache_path in caches:
            info, points = curve_points(
                cache_path,
                head,
                journal,
                split=split,
                params=params,
                draws=draws,
                largest=largest,
                jobs=jobs,
                on_point=on_point,
            )
            infos.append(info)
            all_points += points
            rows += [{"cache": info["path"], **r} for r in summarise(points)]
        skipped = sum(info["from_journal"] for info in infos)
        data = {
            "kind": CURVE_KIND,
            "format": 1,
            "head": head,
            "params": head_params_json(make_head(head, **params)),
            "split": split.to_dict(),
            "draws": draws,
            "caches": infos,
            "summary": rows,
            "points": [{k: v for k, v in p.items() if k != "key"} for p in all_points],
            "note": "validation: the whole validation split at every point; test: the fixed test split",
        }
        _write_atomic(out / "curve.json", (json.dumps(data, indent=2) + "\n").encode())
        if plots:
            from headstart.heads.plots import plot_learning_curve

            tmp = out / f".curve.{os.getpid()}.png"
            plot_learning_curve(rows, infos, tmp, head=head)
            os.replace(tmp, out / "curve.png")
    return CurveResult(out, infos, rows, skipped, time.perf_counter() - t0)
