"""Training heads on a cache: split it, fit one head (`train`) or several (`compare`), write run folders.

Rows are read from the cache in blocks. A cache that fits in memory (a quarter of the available
RAM) is loaded once at its own dtype (float16 stays float16) and converted a batch at a time;
a larger one is streamed from the HDF5 file by the Keras heads. Every row read is checked for
NaN and infinity before anything is fitted.

The split follows from each picture's relative path and the seed (`headstart.heads.split`);
the test split is predicted only after fitting, and nothing is chosen on it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.cache import open_cache
from headstart.errors import HeadError, RunError
from headstart.heads import metrics as M
from headstart.heads.base import fitted_info
from headstart.heads.baseline_run import read_baseline
from headstart.heads.names import DEFAULT_HEADS
from headstart.heads.prepare import Data, calibration_rows_args, prepare
from headstart.heads.registry import head_names, head_params, head_params_json, make_head, save_head
from headstart.heads.rundir import (
    COMPARISON_KIND,
    COMPARISON_PNG,
    HISTORY_CSV,
    METRICS_JSON,
    RUN_KIND,
    check_out,
    result_writer,
    seal_comparison,
    seal_run,
    versions,
    write_json,
)
from headstart.heads.split import DEFAULT_CALIBRATION_FRACTION, SplitSpec
from headstart.heads.views import per_picture
from headstart.settings.config import check_cache_settings

log = logging.getLogger(__name__)


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
            out = f"best epoch {self.fitted['best_epoch_']} of {self.fitted['n_iter_']}"
        elif "k_" in self.fitted:
            out = f"k={self.fitted['k_']}"
        else:
            out = ""
        if "temperature_" in self.fitted:
            out += f"{', ' if out else ''}temperature {self.fitted['temperature_']:.3g}"
        return out

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


def _write_history(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys or ["epoch"])
        writer.writeheader()
        writer.writerows(rows)


def predict_split(head, source, n_classes: int) -> np.ndarray:
    """Probabilities over all ``n_classes`` of every row of a source."""
    if not len(source.labels):
        return np.zeros((0, n_classes))
    return M.full_proba(head.predict_proba_source(source), head.classes_, n_classes)


IN_MEMORY_HEADS = ("logreg", "svm", "knn")
CALIBRATION_SPLITS = ("calib", "val", "test")
"""Splits whose ECE and log loss are reported before and after calibration."""


def _split_metrics(head, data: Data, split: str, n_classes: int) -> dict[str, Any]:
    """Metrics of the head on one split (one score per picture when the cache has views)."""
    proba, y = predict_split(head, data.sources[split], n_classes), data.labels(split)
    if data.paths is not None:  # one score per picture: its views averaged
        proba, y, _ = per_picture(proba, y, data.paths[split])
    return M.split_metrics(y, proba, data.class_names)


def _fit_one(
    data: Data,
    name: str,
    params: Mapping[str, Any],
    folder: Path,
    final: Path,
    plots: bool,
    calibrate: str | None = None,
    extra: Mapping[str, Any] | None = None,
    texts=None,
) -> TrainResult:
    """Fit one head and write its run into ``folder`` (which becomes ``final`` once swapped in).

    ``calibrate="temperature"`` fits a temperature on rows no fit or choice used, after fitting:
    the ``calib`` split set aside by `prepare`, or out-of-fold scores of the training rows (when
    ``data.folds`` is set); ``metrics.json`` then holds ECE and log loss before and after. ``extra`` goes into run.json.
    ``texts``: the class names' text embeddings (`headstart.heads.zeroshot.ClassTexts`) for a head
    that needs them (zeroshot), recorded in run.json as ``text_tower``.
    """
    head = _new_head(name, params, texts)
    if data.streamed and name in IN_MEMORY_HEADS:
        raise RunError(
            f"The {name} head needs the training rows in memory, and {data.cache_path} is too large "
            "for the memory available. Use --head softmax or --head mlp, which stream from the file."
        )
    n_train, n_val = len(data.indices["train"]), len(data.indices["val"])
    log.info("fitting %s on %d training rows (%d validation)", name, n_train, n_val)
    val = data.sources["val"] if n_val else None
    t0 = time.perf_counter()
    try:
        head.fit_source(data.sources["train"], val)
    except ValueError as err:
        raise RunError(f"Training the {name} head failed: {err}") from err
    n_classes = len(data.class_names)
    before = {}
    if calibrate:
        from headstart.heads.calibration import calibrate as fit_calibration

        if data.calibration is None:
            raise RunError("Expected a calibration split to calibrate on. Received: none was set aside.")
        reported = [s for s in CALIBRATION_SPLITS if s in data.sources]
        before = {split: _split_metrics(head, data, split, n_classes) for split in reported}
        if data.folds is not None:
            from headstart.heads.calibration import calibrate_logits, crossfit_logits

            logits, y_idx = crossfit_logits(
                lambda: _new_head(name, params, texts), data.sources["train"], val, data.folds
            )
            calibration = calibrate_logits(head, logits, y_idx, calibrate)
        else:
            calibration = fit_calibration(head, data.sources["calib"], calibrate)
        calibration.update(data.calibration)
    fit_seconds = time.perf_counter() - t0
    metrics = {}
    for split in ("val", "test"):
        metrics[split] = _split_metrics(head, data, split, n_classes)
        log.info("%s %s: %s", name, split, M.summary_line(metrics[split]))
    if calibrate:
        after = {**metrics, **{s: _split_metrics(head, data, s, n_classes) for s in reported if s not in metrics}}
        for split in reported:
            if before[split].get("n"):
                calibration[split] = {
                    "log_loss_before": before[split]["log_loss"],
                    "log_loss_after": after[split]["log_loss"],
                    "ece_before": before[split]["ece"],
                    "ece_after": after[split]["ece"],
                    "calibration_bins_before": before[split]["calibration_bins"],
                }
        metrics["calibration"] = calibration
    run = {
        "head": name,
        "params": head_params_json(head),
        "fitted": fitted_info(head),
        "cache": data.cache_info,
        "split": {**data.spec.to_dict(), "counts": data.counts},
        **({"excluded": data.excluded} if data.excluded else {}),
        "class_names": data.class_names,
        "streamed": data.streamed,
        "fit_seconds": round(fit_seconds, 3),
        "calibrate": calibrate,
        **({"calibration": data.calibration} if calibrate else {}),
        **dict(extra or {}),
        **({"text_tower": texts.to_dict()} if getattr(head, "needs_texts", False) else {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_head(head, folder)
    write_json(folder / METRICS_JSON, {"class_names": data.class_names, **metrics})
    _write_history(head.history_, folder / HISTORY_CSV)
    if plots:
        chosen = getattr(head, "C_", getattr(head, "best_epoch_", getattr(head, "k_", None)))
        _plot_run(folder, name, head.history_, metrics, data.class_names, chosen)
    seal_run(folder, run)
    return TrainResult(
        run_dir=final,
        head=name,
        metrics=metrics,
        fit_seconds=fit_seconds,
        counts={k: len(v) for k, v in data.indices.items()},
        streamed=data.streamed,
        fitted=run["fitted"],
    )


def _new_head(name: str, params: Mapping[str, Any], texts):
    """A new head by name; one that needs the class texts (zeroshot) gets them."""
    head = make_head(name, **params)
    if getattr(head, "needs_texts", False):
        head.texts = texts
    return head


def _plot_run(folder: Path, head: str, history, metrics, class_names, chosen) -> None:
    from headstart.heads import plots

    shown = "test" if metrics["test"].get("n") else "val"
    m = metrics[shown]
    if history:  # a head fitted on no picture (zeroshot) has no curve to draw
        plots.plot_curves(history, folder / "curves.png", title=f"{head}: learning curves", chosen=chosen)
    if m.get("n"):
        plots.plot_confusion(
            m["confusion_matrix"], class_names, folder / "confusion.png", title=f"{head}: {shown} split"
        )
        cal = metrics.get("calibration", {}).get(shown)
        before = (cal["calibration_bins_before"], cal["ece_before"]) if cal else None
        title = f"{head}: {shown} split, ECE {m['ece']:.3f}"
        if cal:
            title = f"{head}: {shown} split, ECE {cal['ece_before']:.3f} -> {m['ece']:.3f} (temperature)"
        plots.plot_calibration(m["calibration_bins"], m["ece"], folder / "calibration.png", title=title, before=before)


def train(
    cache_path: str | os.PathLike,
    head: str = "logreg",
    out: str | os.PathLike = "runs/logreg",
    *,
    split: SplitSpec = SplitSpec(),
    params: Mapping[str, Any] | None = None,
    plots: bool = True,
    stream: bool | None = None,
    exclude=None,
    calibrate: str | None = None,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    calibration_rows: str = "split",
    texts=None,
) -> TrainResult:
    """Fit one head on the training split of a cache and write a run folder to ``out``.

    ``params`` are the head's options (see `head_params`); ``stream`` forces (True) or forbids
    (False) reading batches from the file instead of memory; None decides by size. ``exclude``: an
    `headstart.exclude_list.ExcludeList` of pictures to leave out of every split. ``out`` must
    be new, empty or an earlier run (replaced whole, in one step, when the new one is complete).
    ``calibrate="temperature"`` sets ``calibration_fraction`` of the training rows aside (the
    head trains on the rest) and fits the temperature on them; with ``calibration_rows="crossfit"``
    the head trains on all of them and the temperature is fitted on out-of-fold scores
    (`headstart.heads.split.CALIBRATION_FOLDS` more fits). ``texts``: the class names' text
    embeddings for the zeroshot head (`headstart.zeroshot.train` computes them from the preset).
    """
    from headstart.heads.calibration import check_calibration

    check_cache_settings(cache_path)  # refuse settings this version does not know, before any work

    out = Path(out)
    make_head(head, **dict(params or {}))  # bad options fail before the cache is read
    calibrate = check_calibration(calibrate)
    check_out(out, RUN_KIND)  # fail early; checked again under the lock
    with open_cache(cache_path) as cache:
        data = prepare(
            cache, split, stream, exclude, *calibration_rows_args(calibrate, calibration_rows, calibration_fraction)
        )
        with result_writer(out, RUN_KIND) as tmp:
            return _fit_one(data, head, dict(params or {}), tmp, out, plots, calibrate, texts=texts)


def compare(
    cache_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    heads: Sequence[str] = DEFAULT_HEADS,
    split: SplitSpec = SplitSpec(),
    params: Mapping[str, Any] | None = None,
    plots: bool = True,
    stream: bool | None = None,
    baseline: str | os.PathLike | None = None,
    exclude=None,
    texts=None,
) -> CompareResult:
    """Fit several heads on the same split; each run goes to ``out/<head>``, the table to ``out``.

    ``params`` are shared options; each head takes those it knows (``epochs`` goes to the Keras
    heads, ``class_weight`` to all). An option no chosen head takes is an error. The comparison
    is swapped into ``out`` whole when every head is done. ``baseline``: a `headstart baseline` run
    folder on the same split, added as one more row of the table and the plot. ``texts``: as `train`'s.
    """
    check_cache_settings(cache_path)  # refuse settings this version does not know, before any work
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
    check_out(out, COMPARISON_KIND)
    runs = []
    with open_cache(cache_path) as cache:
        data = prepare(cache, split, stream, exclude)
        extra = []
        if baseline is not None:
            extra.append(read_baseline(baseline, split, data.class_names))
        left_out = [h for h in heads if h in IN_MEMORY_HEADS] if data.streamed else []
        if left_out:
            log.warning("the cache is streamed from disk; %s need memory and are left out", ", ".join(left_out))
            heads = [h for h in heads if h not in left_out]
            if not heads:
                raise RunError(
                    f"The {', '.join(left_out)} heads need the training rows in memory; the cache is too large."
                )
        with result_writer(out, COMPARISON_KIND) as tmp:
            for name in heads:
                runs.append(_fit_one(data, name, per_head[name], tmp / name, out / name, plots, texts=texts))
            rows = [r.row() for r in runs] + extra
            if plots:
                from headstart.heads import plots as P

                P.plot_comparison(rows, tmp / COMPARISON_PNG)
            seal_comparison(
                tmp,
                {
                    "cache": str(Path(cache_path).resolve()),
                    "split": {**split.to_dict(), "counts": {k: len(v) for k, v in data.indices.items()}},
                    "rows": rows,
                },
                runs=heads,
            )
    return CompareResult(out=out, rows=rows, runs=runs)
