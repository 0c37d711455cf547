"""Train, compare, evaluate, predict and list mistakes with heads; each run is a folder to audit.

A run directory holds everything needed to reuse or audit a result::

    head.json, standardization.npz, head.keras | head.joblib   the fitted head (see estimators)
    run.json        head and options, cache path and fingerprint, split, class names, versions, seconds
    metrics.json    validation and test metrics (see metrics.split_metrics)
    history.csv     per-epoch loss and accuracy (Keras heads) or the C path (logreg)
    curves.png, confusion.png, calibration.png

Rows are read from the cache in blocks. A cache that fits in memory (a quarter of the available
RAM) is loaded once at its own dtype (float16 stays float16) and converted a batch at a time;
a larger one is streamed from the HDF5 file by the Keras heads.

The split follows from each picture's relative path and the seed (`headstart.heads.split`);
the test split is predicted only after fitting, and nothing is chosen on it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import importlib.metadata as _md
import json
import logging
import os
import platform
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from headstart.cache import describe_diff, diff_settings, open_cache
from headstart.cache.store import CacheReader
from headstart.errors import CacheMismatchError, HeadstartError, RunError
from headstart.heads import metrics as M
from headstart.heads.estimators import (
    ArraySource,
    HeadError,
    head_name,
    head_names,
    head_params,
    head_params_json,
    load_head,
    make_head,
    save_head,
)
from headstart.heads.split import SPLITS, SplitError, SplitSpec, assign, check_trainable, split_counts

log = logging.getLogger(__name__)

RUN_FORMAT = 1
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
HISTORY_CSV = "history.csv"
COMPARISON_JSON = "comparison.json"
PLOTS = ("curves.png", "confusion.png", "calibration.png")
DEFAULT_HEADS = ("softmax", "logreg", "mlp")
STREAM_WINDOW = 4  # blocks of ~8 MiB mixed at a time when shuffling a streamed cache


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """A finished run: where it is, and its headline numbers."""

    run_dir: Path
    head: str
    metrics: dict[str, Any]
    fit_seconds: float
    counts: dict[str, int]
    streamed: bool
    fitted: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> str:
        """What validation chose: ``C=0.01`` for logreg, ``best epoch 7 of 12`` for the Keras heads."""
        if "C_" in self.fitted:
            return f"C={self.fitted['C_']:g}"
        if "best_epoch_" in self.fitted:
            return f"best epoch {self.fitted['best_epoch_']} of {self.fitted['n_iter_']}"
        return ""

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics["val"].get("accuracy")

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics["test"].get("accuracy")

    @property
    def test_log_loss(self) -> float | None:
        return self.metrics["test"].get("log_loss")

    def row(self) -> dict[str, Any]:
        """The comparison-table row of this run."""
        return {
            "head": self.head,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "test_log_loss": self.test_log_loss,
            "fit_seconds": self.fit_seconds,
            "run_dir": str(self.run_dir),
        }


@dataclass(frozen=True)
class CompareResult:
    out: Path
    rows: list[dict[str, Any]]
    runs: list[TrainResult]


@dataclass(frozen=True)
class EvaluateResult:
    run_dir: Path
    cache_path: Path
    scope: str  # "test split" or "whole cache"
    metrics: dict[str, Any]
    class_names: list[str]
    excluded: int = 0  # rows of the run's own training / validation pictures left out


@dataclass(frozen=True)
class Prediction:
    """One picture: its top classes with probabilities, or why it could not be read."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"path": str(self.path), "error": self.error}
        return {
            "path": str(self.path),
            "class": self.label,
            "probability": self.probability,
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


@dataclass(frozen=True)
class PredictResult:
    predictions: list[Prediction]  # in the order the pictures were given / found

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.ok]


@dataclass(frozen=True)
class Mistake:
    """A misclassified test picture."""

    path: str  # relative to the cache root
    file: Path  # where it is on disk (cache root / path)
    true: str
    predicted: str
    probability: float  # of the predicted class
    loss: float  # -log p(true class)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "file": str(self.file)}


@dataclass(frozen=True)
class MisclassifiedResult:
    mistakes: list[Mistake]
    n_test: int
    n_wrong: int
    montage: Path | None


# -- reading the cache -------------------------------------------------------------------------


class CacheSource:
    """A `RowSource` over chosen rows of an open cache, read a block of ~8 chunks at a time.

    Shuffling mixes `STREAM_WINDOW` blocks at once; recently read blocks are kept so that each
    block is read about once per epoch.
    """

    def __init__(self, cache: CacheReader, rows: np.ndarray, labels: np.ndarray | None = None):
        self._cache = cache
        self._rows = np.asarray(rows, dtype=np.int64)
        self.labels = cache.labels[self._rows] if labels is None else np.asarray(labels)
        self.n_features = cache.dim
        n = len(self._rows)
        group = self._rows // cache.block_rows
        cuts = np.flatnonzero(np.diff(group)) + 1
        self._starts = np.concatenate([[0], cuts]).astype(np.int64) if n else np.zeros(0, np.int64)
        stops = np.concatenate([cuts, [n]]).astype(np.int64) if n else np.zeros(0, np.int64)
        self.blocks = list(zip(self._starts.tolist(), stops.tolist()))
        self.shuffle_window = STREAM_WINDOW
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def read_block(self, b: int) -> np.ndarray:
        start, stop = self.blocks[b]
        lo, hi = int(self._rows[start]), int(self._rows[stop - 1]) + 1
        block = self._cache.read(lo, hi, dtype=self._cache.dtype)  # convert only the rows kept
        return block[self._rows[start:stop] - lo].astype(np.float32)

    def _block(self, b: int) -> np.ndarray:
        if b in self._kept:
            self._kept.move_to_end(b)
            return self._kept[b]
        data = self.read_block(b)
        self._kept[b] = data
        while len(self._kept) > 2 * self.shuffle_window + 1:
            self._kept.popitem(last=False)
        return data

    def gather(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.n_features), dtype=np.float32)
        which = np.searchsorted(self._starts, positions, side="right") - 1
        for b in np.unique(which):
            mask = which == b
            out[mask] = self._block(int(b))[positions[mask] - self._starts[b]]
        return out


def _memory_budget() -> int:
    """Bytes of features we allow ourselves to hold: a quarter of the available RAM (else 2 GB)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return 2 << 30
    return int(psutil.virtual_memory().available // 4)


def _load_splits(cache: CacheReader, codes: np.ndarray) -> list[np.ndarray]:
    """The features of each split in memory, at the cache's dtype, in one pass over the file."""
    arrays = [np.empty((int((codes == k).sum()), cache.dim), dtype=cache.dtype) for k in range(len(SPLITS))]
    filled = [0] * len(SPLITS)
    for start, block in cache.iter_chunks(dtype=cache.dtype):
        c = codes[start : start + len(block)]
        for k in range(len(SPLITS)):
            sel = block[c == k]
            arrays[k][filled[k] : filled[k] + len(sel)] = sel
            filled[k] += len(sel)
    return arrays


@dataclass
class _Data:
    """A cache split and ready to fit on: label codes and a row source per split."""

    cache_path: Path
    class_names: list[str]
    spec: SplitSpec
    indices: dict[str, np.ndarray]
    counts: dict[str, dict[str, int]]
    sources: dict[str, Any]
    streamed: bool
    fingerprint: dict[str, Any]
    cache_info: dict[str, Any]

    def labels(self, name: str) -> np.ndarray:
        return self.sources[name].labels


def _prepare(cache: CacheReader, spec: SplitSpec, stream: bool | None) -> _Data:
    n = len(cache)
    if n == 0:
        raise RunError(f"Expected a cache with extracted pictures. Received: {cache.path} (0 rows); run extract first.")
    if not cache.complete:
        log.warning("%s: extraction did not finish; training on the %d rows committed so far", cache.path, n)
    codes = assign(cache.paths, spec)
    indices = {name: np.flatnonzero(codes == k) for k, name in enumerate(SPLITS)}
    counts = split_counts(cache.labels, indices, cache.class_names)
    check_trainable(counts, cache.counts())
    if sum(1 for v in counts["train"].values() if v) < 2:
        raise SplitError(
            f"Expected pictures of at least two classes. Received: {cache.path} with training pictures of "
            f"{', '.join(c for c, v in counts['train'].items() if v) or 'no class'} only."
        )
    need = n * cache.dim * cache.dtype.itemsize
    streamed = need > _memory_budget() if stream is None else bool(stream)
    if streamed:
        log.info("streaming %s from disk (%.0f MB of features)", cache.path, need / 1e6)
        sources = {name: CacheSource(cache, idx) for name, idx in indices.items()}
        val = sources["val"]
        if len(val) and len(val) * cache.dim * 4 < _memory_budget() // 2:
            # Early stopping scores the validation rows every epoch: keep them in memory if they fit.
            blocks = [val.read_block(b) for b in range(len(val.blocks))]
            sources["val"] = ArraySource(np.concatenate(blocks), val.labels)
    else:
        arrays = _load_splits(cache, codes)
        sources = {
            name: ArraySource(arrays[k], cache.labels[indices[name]]) for k, name in enumerate(SPLITS)
        }
    return _Data(
        cache_path=cache.path.resolve(),
        class_names=list(cache.class_names),
        spec=spec,
        indices=indices,
        counts=counts,
        sources=sources,
        streamed=streamed,
        fingerprint=cache.fingerprint,
        cache_info={
            "path": str(cache.path.resolve()),
            "fingerprint": cache.fingerprint,
            "fingerprint_digest": cache.fingerprint_digest,
            "root": cache.root,
            "weights_path": cache.weights_path,
            "rows": n,
            "dim": cache.dim,
            "dtype": str(cache.dtype),
            "complete": cache.complete,
        },
    )


# -- run directories ---------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("headstart", "keras", "tensorflow", "scikit-learn", "numpy", "h5py", "joblib", "matplotlib"):
        with contextlib.suppress(_md.PackageNotFoundError):
            out[name] = _md.version(name)
    return out


def _ours(out: Path, marker: str) -> bool:
    """True for a folder that holds an earlier result of this kind (replaced, not refused)."""
    if (out / marker).exists():
        return True
    if marker == COMPARISON_JSON:  # a comparison that stopped part-way: only finished runs in it
        # (dot-names are our own temporary folders, left by a run that was killed)
        return all(
            p.name.startswith(".") or (p.is_dir() and p.name in head_names() and (p / RUN_JSON).exists())
            for p in out.iterdir()
        )
    return False


def _check_out(out: Path, marker: str) -> None:
    """``out`` must be new, empty, or an earlier result of the same kind (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"Expected --out to be a folder. Received: {out} (a file).")
    if out.is_dir() and any(out.iterdir()) and not _ours(out, marker):
        raise RunError(
            f"Expected --out to be a new or empty folder, or an earlier result to replace. "
            f"Received: {out} (holds other files, no {marker}); choose another --out."
        )


@contextlib.contextmanager
def _atomic_dir(out: Path):
    """Write into a temporary sibling folder, then swap it into place; no half-written run remains."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a run that was killed before it could swap or clean up.
    for stale in [*out.parent.glob(f".{out.name}.partial-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_history(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys or ["epoch"])
        writer.writeheader()
        writer.writerows(rows)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _predict_split(head, source, n_classes: int) -> np.ndarray:
    if not len(source.labels):
        return np.zeros((0, n_classes))
    return M.full_proba(head.predict_proba_source(source), head.classes_, n_classes)


def _fit_one(data: _Data, head_name_: str, params: Mapping[str, Any], out: Path, plots: bool) -> TrainResult:
    head = make_head(head_name_, **params)
    if data.streamed and head_name_ == "logreg":
        raise RunError(
            f"The logreg head needs the training rows in memory, and {data.cache_path} is too large "
            "for the memory available. Use --head softmax or --head mlp, which stream from the file."
        )
    n_train, n_val = len(data.indices["train"]), len(data.indices["val"])
    log.info("fitting %s on %d training rows (%d validation)", head_name_, n_train, n_val)
    val = data.sources["val"] if len(data.indices["val"]) else None
    t0 = time.perf_counter()
    try:
        head.fit_source(data.sources["train"], val)
    except ValueError as err:
        raise RunError(f"Training the {head_name_} head failed: {err}") from err
    fit_seconds = time.perf_counter() - t0
    n_classes = len(data.class_names)
    metrics = {}
    for name in ("val", "test"):
        proba = _predict_split(head, data.sources[name], n_classes)
        metrics[name] = M.split_metrics(data.labels(name), proba, data.class_names)
        log.info("%s %s: %s", head_name_, name, M.summary_line(metrics[name]))
    run = {
        "format": RUN_FORMAT,
        "head": head_name_,
        "params": head_params_json(head),
        "fitted": {k: getattr(head, k) for k in ("best_epoch_", "n_iter_", "C_") if hasattr(head, k)},
        "cache": data.cache_info,
        "split": {**data.spec.to_dict(), "counts": data.counts},
        "class_names": data.class_names,
        "streamed": data.streamed,
        "fit_seconds": round(fit_seconds, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    with _atomic_dir(out) as tmp:
        save_head(head, tmp)
        _write_json(tmp / RUN_JSON, run)
        _write_json(tmp / METRICS_JSON, {"class_names": data.class_names, **metrics})
        _write_history(head.history_, tmp / HISTORY_CSV)
        if plots:
            chosen = getattr(head, "C_", getattr(head, "best_epoch_", None))
            _plot_run(tmp, head_name_, head.history_, metrics, data.class_names, chosen)
    return TrainResult(
        run_dir=out,
        head=head_name_,
        metrics=metrics,
        fit_seconds=fit_seconds,
        counts={k: len(v) for k, v in data.indices.items()},
        streamed=data.streamed,
        fitted=run["fitted"],
    )


def _plot_run(folder: Path, head: str, history, metrics, class_names, chosen) -> None:
    from headstart.heads import plots

    shown = "test" if metrics["test"].get("n") else "val"
    m = metrics[shown]
    plots.plot_curves(history, folder / "curves.png", title=f"{head}: learning curves", chosen=chosen)
    if m.get("n"):
        plots.plot_confusion(
            m["confusion_matrix"], class_names, folder / "confusion.png", title=f"{head}: {shown} split"
        )
        plots.plot_calibration(m["calibration_bins"], m["ece"], folder / "calibration.png",
                               title=f"{head}: {shown} split, ECE {m['ece']:.3f}")


def train(
    cache_path: str | os.PathLike,
    head: str = "logreg",
    out: str | os.PathLike = "runs/logreg",
    *,
    split: SplitSpec = SplitSpec(),
    params: Mapping[str, Any] | None = None,
    plots: bool = True,
    stream: bool | None = None,
) -> TrainResult:
    """Fit one head on the training split of a cache and write a run directory to ``out``.

    ``params`` are the head's options (see `head_params`); ``stream`` forces (True) or forbids
    (False) reading batches from the file instead of memory; None decides by size.
    """
    out = Path(out)
    make_head(head, **dict(params or {}))  # bad options fail before the cache is read
    _check_out(out, RUN_JSON)
    with open_cache(cache_path) as cache:
        data = _prepare(cache, split, stream)
        return _fit_one(data, head, dict(params or {}), out, plots)


def compare(
    cache_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    heads: Sequence[str] = DEFAULT_HEADS,
    split: SplitSpec = SplitSpec(),
    params: Mapping[str, Any] | None = None,
    plots: bool = True,
    stream: bool | None = None,
) -> CompareResult:
    """Fit several heads on the same split; each run goes to ``out/<head>``, the table to ``out``.

    ``params`` are shared options; each head takes those it knows (``epochs`` goes to the Keras
    heads, ``class_weight`` to all). An option no chosen head takes is an error.
    """
    out = Path(out)
    heads = list(dict.fromkeys(heads))
    if not heads:
        raise HeadError(f"Expected at least one head among {', '.join(head_names())}. Received: none.")
    params = dict(params or {})
    per_head = {}
    for name in heads:
        accepted = set(head_params(name))
        per_head[name] = {k: v for k, v in params.items() if k in accepted}
        make_head(name, **per_head[name])
    unused = sorted(set(params) - set().union(*(set(head_params(h)) for h in heads)))
    if unused:
        raise HeadError(f"No head among {', '.join(heads)} takes the option {', '.join(unused)}.")
    _check_out(out, COMPARISON_JSON)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with open_cache(cache_path) as cache:
        data = _prepare(cache, split, stream)
        if data.streamed and "logreg" in heads:
            log.warning("the cache is streamed from disk; logreg needs memory and is left out")
            heads = [h for h in heads if h != "logreg"]
            if not heads:
                raise RunError("The logreg head needs the training rows in memory; the cache is too large.")
        for name in heads:
            runs.append(_fit_one(data, name, per_head[name], out / name, plots))
    rows = [r.row() for r in runs]
    _write_json(
        out / COMPARISON_JSON,
        {
            "cache": str(Path(cache_path).resolve()),
            "split": {**split.to_dict(), "counts": {k: len(v) for k, v in data.indices.items()}},
            "rows": rows,
        },
    )
    if plots:
        from headstart.heads import plots as P

        P.plot_comparison(rows, out / "comparison.png")
    return CompareResult(out=out, rows=rows, runs=runs)


# -- reusing a run -----------------------------------------------------------------------------


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """``(run.json as a dict, the fitted head)`` of a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not path.exists():
        raise RunError(
            f"Expected a run directory made by `headstart train`. Received: {run_dir} "
            f"({'no such folder' if not run_dir.exists() else 'no ' + RUN_JSON + ' in it'})."
        )
    try:
        info = json.loads(path.read_text())
        info["head"], info["class_names"], info["cache"]["fingerprint"], info["split"]
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(f"Expected a readable {RUN_JSON} in {run_dir}. Received: a damaged file ({err}).") from err
    try:
        head = load_head(run_dir)
    except HeadError as err:
        raise RunError(f"The run {run_dir} has no usable head: {err}") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunError(f"Cannot read the head saved in {run_dir}: {err!r}.") from err
    if head_name(head) != info["head"]:
        raise RunError(f"{run_dir}: run.json says {info['head']}, the saved head is {head_name(head)}.")
    return info, head


def _check_fingerprint(info: Mapping[str, Any], cache: CacheReader) -> None:
    diff = diff_settings(info["cache"]["fingerprint"], cache.fingerprint)
    if diff:
        detail = describe_diff(diff, labels=("run", "cache"))
        raise CacheMismatchError(
            f"Expected a cache extracted with the run's settings. Received: {cache.path}, which differs in "
            f"{detail}. Extract the pictures again with the run's settings, or train a head on this cache."
        )


def _label_map(run_classes: Sequence[str], cache: CacheReader) -> np.ndarray:
    """Cache label code → run class index; the cache's classes must be among the run's."""
    unknown = [c for c in cache.class_names if c not in run_classes]
    if unknown:
        raise RunError(
            f"Expected a cache whose classes are among the run's ({', '.join(run_classes)}). "
            f"Received: {cache.path} with {', '.join(unknown)}."
        )
    return np.array([list(run_classes).index(c) for c in cache.class_names], dtype=np.int64)


def _run_cache_path(info: Mapping[str, Any], run_dir: Path) -> Path:
    path = Path(info["cache"]["path"])
    if not path.exists():
        raise RunError(
            f"Expected the run's cache at {path}. Received: no such file. "
            f"Pass the cache explicitly: headstart evaluate {run_dir} CACHE."
        )
    return path


def _test_rows(info: Mapping[str, Any], cache: CacheReader) -> np.ndarray:
    spec = SplitSpec.from_dict(info["split"])
    return np.flatnonzero(assign(cache.paths, spec) == SPLITS.index("test"))


def evaluate(run_dir: str | os.PathLike, cache_path: str | os.PathLike | None = None) -> EvaluateResult:
    """Metrics of a run on its test split, or on the whole of another cache.

    The cache must have the run's fingerprint (`CacheMismatchError` names the differing
    settings). Another cache of the same dataset folder (same root) would hold the run's own
    training pictures: those are left out, and ``excluded`` says how many.
    """
    run_dir = Path(run_dir)
    info, head = load_run(run_dir)
    own = cache_path is None
    path = _run_cache_path(info, run_dir) if own else Path(cache_path)
    if not own and path.exists() and Path(info["cache"]["path"]).exists():
        own = os.path.samefile(path, info["cache"]["path"])
    class_names = list(info["class_names"])
    with open_cache(path) as cache:
        _check_fingerprint(info, cache)
        mapping = _label_map(class_names, cache)
        excluded = 0
        if own:
            rows, scope = _test_rows(info, cache), "test split"
        else:
            rows, scope = np.arange(len(cache)), "whole cache"
            if cache.root and cache.root == info["cache"].get("root"):
                keep = _test_rows(info, cache)
                excluded = len(rows) - len(keep)
                rows = keep
                if excluded:
                    log.warning("left out %d pictures of the run's own training and validation splits", excluded)
        source = CacheSource(cache, rows, labels=mapping[cache.labels[rows]])
        proba = _predict_split(head, source, len(class_names))
        metrics = M.split_metrics(source.labels, proba, class_names)
    return EvaluateResult(run_dir, path, scope, metrics, class_names, excluded)


def _gather_files(paths: Iterable[str | os.PathLike], find_images) -> list[tuple[Path, str | None]]:
    """Pictures to predict in order, each with None or the reason it is skipped already."""
    out: list[tuple[Path, str | None]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            out.append((p, "no such file or folder"))
            continue
        found = find_images([p]) if p.is_dir() else [p]
        if p.is_dir() and not found:
            out.append((p, "no pictures in this folder"))
        for f in found:
            f = Path(f)
            if f not in seen:
                seen.add(f)
                out.append((f, None))
    return out


def _weights_path(info: Mapping[str, Any], weights: str | os.PathLike | None) -> str | None:
    """The weights file for the run's backbone, checked against the fingerprint's SHA-256.

    Without ``weights``, the file the cache was extracted from, where it still is."""
    if weights is None:
        recorded = info["cache"].get("weights_path")
        if not recorded:
            return None
        if not Path(recorded).is_file():
            raise RunError(
                f"Expected the weights file the cache was extracted with at {recorded}. "
                "Received: no such file; pass it with --weights PATH."
            )
        weights = recorded
    path = Path(weights).expanduser()
    if not path.is_file():
        raise RunError(f"Expected --weights to be a weights file. Received: {path} (no such file).")
    expected = str(info["cache"]["fingerprint"].get("weights", ""))
    if not expected.startswith("sha256:"):
        raise RunError(f"The run's backbone uses weights {expected!r}, not a file; leave out --weights.")
    from headstart.extractor.config import file_sha256

    got = f"sha256:{file_sha256(path)}"
    if got != expected:
        raise CacheMismatchError(
            f"Expected the weights file the run's cache was extracted with ({expected[:23]}...). "
            f"Received: {path} ({got[:23]}...)."
        )
    return str(path.resolve())


def _key(path) -> Path:
    return Path(path).resolve()


def predict(
    run_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    top_k: int = 1,
    batch_size: int = 32,
    weights: str | os.PathLike | None = None,
) -> PredictResult:
    """Classify pictures (files, or folders searched recursively) with a run's head.

    Features are extracted with the run's backbone and settings, read from its fingerprint;
    ``weights`` is the weights file when the cache was extracted with one (its SHA-256 must
    match). A picture that cannot be read becomes a `Prediction` with ``error`` set; the rest
    are still predicted.
    """
    if top_k < 1:
        raise RunError(f"Expected --top-k of 1 or more. Received: {top_k}.")
    if not paths:
        raise RunError("Expected at least one picture or folder to predict. Received: none.")
    info, head = load_run(run_dir)
    try:
        from headstart.extractor.config import ExtractionConfig
        from headstart.extractor.runner import embed_files
        from headstart.extractor.scan import find_images
    except ImportError as err:  # pragma: no cover - the extractor ships with headstart
        raise RunError(f"predict needs headstart.extractor, which cannot be imported: {err}.") from err
    config = ExtractionConfig.from_fingerprint(info["cache"]["fingerprint"], weights_path=_weights_path(info, weights))
    items = _gather_files(paths, find_images)
    files = [f for f, reason in items if reason is None]
    reasons: dict[Path, str] = {_key(f): r for f, r in items if r is not None}
    top: dict[Path, list[tuple[str, float]]] = {}
    if files:
        res = embed_files(files, config, batch_size=batch_size)
        reasons.update({_key(f): str(r) for f, r in res.failed})
        if len(res.ok):
            feats = np.asarray(res.features, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != head.n_features_in_:
                raise RunError(
                    f"Expected {head.n_features_in_} features per picture, as in the run's cache. "
                    f"Received: shape {feats.shape} from the extractor; the backbone settings differ."
                )
            class_names = list(info["class_names"])
            proba = M.full_proba(head.predict_proba(feats), head.classes_, len(class_names))
            k = min(top_k, len(class_names))
            order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
            for f, row, idx in zip(res.ok, proba, order):
                top[_key(f)] = [(class_names[i], float(row[i])) for i in idx]
    predictions = []
    for f, _ in items:
        key = _key(f)
        if key in top:
            predictions.append(Prediction(f, top[key]))
        else:
            predictions.append(Prediction(f, error=reasons.get(key, "not predicted")))
    return PredictResult(predictions)


def misclassified(
    run_dir: str | os.PathLike, n: int = 20, montage: str | os.PathLike | None = None
) -> MisclassifiedResult:
    """The ``n`` misclassified test pictures of highest loss; ``montage`` draws them in a grid."""
    if n < 1:
        raise RunError(f"Expected -n of 1 or more. Received: {n}.")
    run_dir = Path(run_dir)
    info, head = load_run(run_dir)
    class_names = list(info["class_names"])
    with open_cache(_run_cache_path(info, run_dir)) as cache:
        _check_fingerprint(info, cache)
        mapping = _label_map(class_names, cache)
        rows = _test_rows(info, cache)
        y = mapping[cache.labels[rows]]
        proba = _predict_split(head, CacheSource(cache, rows, labels=y), len(class_names))
        paths = [cache.paths[i] for i in rows]
        root = Path(cache.root or ".")
    pred = proba.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    loss = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)) if len(rows) else np.zeros(0)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-loss[wrong], kind="stable")]
    mistakes = [
        Mistake(
            path=paths[i],
            file=root / paths[i],
            true=class_names[y[i]],
            predicted=class_names[pred[i]],
            probability=float(proba[i, pred[i]]),
            loss=float(loss[i]),
        )
        for i in wrong[:n]
    ]
    drawn = None
    if montage is not None and mistakes:
        from headstart.heads import plots

        drawn = plots.plot_montage([m.to_dict() for m in mistakes], Path(montage))
    return MisclassifiedResult(mistakes, n_test=len(rows), n_wrong=len(wrong), montage=drawn)


__all__ = [
    "CacheSource",
    "CompareResult",
    "EvaluateResult",
    "HeadstartError",
    "MisclassifiedResult",
    "Mistake",
    "Prediction",
    "PredictResult",
    "TrainResult",
    "compare",
    "evaluate",
    "load_run",
    "misclassified",
    "predict",
    "train",
]
