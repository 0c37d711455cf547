"""The from-scratch baseline: the notebook's small CNN trained on pictures streamed from disk.

What transfer learning is measured against. The network is the one of the classic Dogs vs Cats
notebook (four blocks of Conv2D 32 3x3 + ReLU + MaxPool 2, dropout 0.25 after every second
block, Dense 256 + dropout 0.5, softmax; Adam; pixels scaled to 0-1; random horizontal flips).
Pictures are found, decoded and skipped exactly as `extract` does (`headstart.extractor.scan`,
`headstart.extractor.decode`) and split by `headstart.heads.split` with the same seed and
fractions as the heads, so a baseline run and a head run on a cache of the same folder score the
same test pictures. No array of all pictures is ever built: a `keras.utils.PyDataset` decodes
one batch at a time in worker threads. A picture that cannot be decoded gets weight 0 in its
batch (the batch keeps its shape), is left out of the metrics and is listed in ``run.json``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import BaselineError
from headstart.heads.baseline_run import BASELINE_HEAD

log = logging.getLogger(__name__)

HEAD_NAME = BASELINE_HEAD
MIN_INPUT_SIZE = 46  # the smallest side that leaves one pixel after four (3x3 conv, pool 2) blocks
MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class BaselineParams:
    """The options of a baseline run (all of them go to ``run.json``)."""

    input_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    flip: bool = True
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (
                "--input-size",
                self.input_size,
                self.input_size >= MIN_INPUT_SIZE,
                f"of at least {MIN_INPUT_SIZE} (four conv blocks of 3x3 + pool 2)",
            ),
            ("--epochs", self.epochs, self.epochs >= 1, "at least 1"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, "at least 1"),
            (
                "--learning-rate",
                self.learning_rate,
                math.isfinite(self.learning_rate) and self.learning_rate > 0,
                "above 0",
            ),
            ("--patience", self.patience, self.patience >= 1, "at least 1"),
            ("--workers", self.workers, self.workers >= 1, "at least 1"),
        ]
        for name, value, ok, want in checks:
            if not ok:
                raise BaselineError(f"Expected {name} {want}. Received: {value}.")


def build_cnn(input_size: int, n_classes: int, flip: bool = True):
    """The notebook's CNN on uint8-range pixels; flips (training only) and scaling are layers of it."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.RandomFlip("horizontal", name="flip")(inputs) if flip else inputs
    x = layers.Rescaling(1.0 / 255, name="scale")(x)
    for block in range(1, 5):
        x = layers.Conv2D(32, 3, activation="relu", name=f"conv{block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
        if block % 2 == 0:
            x = layers.Dropout(0.25, name=f"dropout{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="dropout_dense")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def _printable(rel: str) -> bool:
    try:
        rel.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def picture_dataset(
    root: Path,
    rels: Sequence[str],
    labels: Sequence[int],
    params: BaselineParams,
    *,
    shuffle: bool,
    failed: dict[str, str],
):
    """A `keras.utils.PyDataset` of ``(pixels, labels, weights)`` batches decoded from disk.

    ``shuffle`` draws a new order every epoch (seeded). Pictures that fail to decode are recorded
    in ``failed`` (relative path → reason) and get weight 0.
    """
    import keras

    from headstart.extractor.decode import DecodeError, load_image

    size = (params.input_size, params.input_size)
    rels = list(rels)
    labels_arr = np.asarray(labels, dtype=np.int32)

    class Pictures(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=params.workers, use_multiprocessing=False, max_queue_size=4)
            self.rng = np.random.default_rng(params.seed)
            self.order = self.rng.permutation(len(rels)) if shuffle else np.arange(len(rels))

        def __len__(self) -> int:
            return math.ceil(len(rels) / params.batch_size)

        def __getitem__(self, i: int):
            idx = self.order[i * params.batch_size : (i + 1) * params.batch_size]
            x = np.zeros((len(idx), *size, 3), np.float32)
            w = np.ones(len(idx), np.float32)
            for k, j in enumerate(idx):
                rel = rels[j]
                if rel in failed:
                    w[k] = 0
                    continue
                try:
                    x[k] = load_image(root / rel, size)
                except DecodeError as err:
                    failed[rel] = str(err)
                    log.warning("skipped %s: %s", rel, err)
                    w[k] = 0
            return x, labels_arr[idx], w

        def on_epoch_end(self) -> None:
            if shuffle:
                self.order = self.rng.permutation(len(rels))

    return Pictures()


@dataclass
class BaselineResult:
    """A finished baseline run."""

    run_dir: Path
    metrics: dict[str, Any]
    fit_seconds: float
    counts: dict[str, int]
    epochs: int
    best_epoch: int
    failed: list[tuple[str, str]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The comparison-table row of this run (as a head's)."""
        return {
            "head": HEAD_NAME,
            "val_accuracy": self.metrics["val"].get("accuracy"),
            "test_accuracy": self.metrics["test"].get("accuracy"),
            "test_log_loss": self.metrics["test"].get("log_loss"),
            "fit_seconds": self.fit_seconds,
            "run_dir": str(self.run_dir),
        }


def _evaluate(model, root, rels, labels, params, failed, class_names) -> tuple[dict[str, Any], np.ndarray]:
    from headstart.heads import metrics as M

    if not len(rels):
        return M.split_metrics(np.zeros(0, np.int64), np.zeros((0, len(class_names))), class_names), np.zeros(0, bool)
    data = picture_dataset(root, rels, labels, params, shuffle=False, failed=failed)
    proba = np.asarray(model.predict(data, verbose=0), dtype=np.float64)
    proba /= np.maximum(proba.sum(axis=1, keepdims=True), 1e-12)  # float32 softmax rows sum to 1 +- 1e-7
    ok = np.array([r not in failed for r in rels], dtype=bool)
    return M.split_metrics(np.asarray(labels)[ok], proba[ok], class_names), ok


def train_baseline(
    data: str | os.PathLike,
    out: str | os.PathLike = "runs/scratch",
    *,
    params: BaselineParams = BaselineParams(),
    split=None,
    exclude: Sequence[str] = (),
    limit_per_class: int | None = None,
    plots: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> BaselineResult:
    """Train the notebook's CNN on the training split of ``data`` and write a run folder to ``out``.

    ``split`` is a `headstart.heads.split.SplitSpec` (default 70/15/15, seed 0): use the heads' split
    and seed to compare with them. Early stopping on validation loss keeps the best epoch's weights.
    """
    import keras

    from headstart.extractor.scan import scan_dataset
    from headstart.heads import rundir
    from headstart.heads.split import SPLITS, SplitSpec, assign, check_trainable, split_counts
    from headstart.heads.training import _plot_run, _write_history

    split = split or SplitSpec()
    out = Path(out)
    rundir.check_out(out, rundir.RUN_KIND)  # fail early; checked again under the lock
    root = Path(data)
    dataset = scan_dataset(root, exclude=exclude, limit_per_class=limit_per_class)
    failed: dict[str, str] = {}
    items = []
    for rel, label in dataset.items:
        if _printable(rel):
            items.append((rel, label))
        else:
            shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            failed[shown] = "file name is not valid UTF-8; rename the file"
    rels = [r for r, _ in items]
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    class_names = list(dataset.class_names)
    codes = assign(rels, split)
    indices = {name: np.flatnonzero(codes == k) for k, name in enumerate(SPLITS)}
    counts = split_counts(labels, indices, class_names)
    check_trainable(counts, dataset.counts())
    if not len(indices["val"]):
        raise BaselineError(
            f"Expected validation pictures for early stopping. Received: none in {root} with split "
            f"{','.join(map(str, split.fractions))}; add pictures or raise the validation fraction with --split."
        )
    part = {name: ([rels[i] for i in idx], labels[idx]) for name, idx in indices.items()}

    keras.utils.set_random_seed(params.seed)
    model = build_cnn(params.input_size, len(class_names), params.flip)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss="sparse_categorical_crossentropy",
        weighted_metrics=["accuracy"],
    )
    train_data = picture_dataset(root, *part["train"], params, shuffle=True, failed=failed)
    val_data = picture_dataset(root, *part["val"], params, shuffle=False, failed=failed)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience, restore_best_weights=True)
    callbacks: list = [stop]
    if on_epoch:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e + 1, dict(logs))))
    log.info(
        "training the scratch CNN on %d pictures (%d validation), %d px",
        len(part["train"][0]),
        len(part["val"][0]),
        params.input_size,
    )
    t0 = time.perf_counter()
    hist = model.fit(train_data, validation_data=val_data, epochs=params.epochs, callbacks=callbacks, verbose=0)
    fit_seconds = time.perf_counter() - t0
    history = [
        {"epoch": e + 1, **{k: float(v[e]) for k, v in hist.history.items()}} for e in range(len(hist.history["loss"]))
    ]
    val_losses = [row["val_loss"] for row in history]
    best_epoch = int(np.argmin(val_losses)) + 1
    if best_epoch == len(history) == params.epochs:
        log.warning(
            "scratch CNN: the validation loss was still falling at the last of %d epochs; raise --epochs", params.epochs
        )

    metrics = {}
    for name in ("val", "test"):
        metrics[name], _ = _evaluate(model, root, *part[name], params, failed, class_names)
    failed_list = sorted(failed.items())
    run = {
        "head": HEAD_NAME,
        "model": "notebook CNN: 4 x (Conv2D 32 3x3 relu + MaxPool 2), dropout 0.25 after blocks 2 and 4, "
        "Dense 256 relu + dropout 0.5, softmax; Adam; pixels / 255; random horizontal flips",
        "params": {**params.__dict__},
        "fitted": {"best_epoch_": best_epoch, "n_iter_": len(history)},
        "data": {
            "root": str(root.resolve()),
            "pictures": len(dataset),
            "exclude": list(exclude),
            "limit_per_class": limit_per_class,
        },
        "split": {**split.to_dict(), "counts": counts},
        "class_names": class_names,
        "failed": [{"path": p, "reason": r} for p, r in failed_list],
        "fit_seconds": round(fit_seconds, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": rundir.versions(),
    }
    with rundir.result_writer(out, rundir.RUN_KIND) as tmp:
        model.save(tmp / MODEL_FILE)
        rundir.write_json(tmp / rundir.METRICS_JSON, {"class_names": class_names, **metrics})
        _write_history(history, tmp / rundir.HISTORY_CSV)
        if plots:
            _plot_run(tmp, HEAD_NAME, history, metrics, class_names, best_epoch)
        rundir.seal_run(tmp, run)
    return BaselineResult(
        run_dir=out,
        metrics=metrics,
        fit_seconds=fit_seconds,
        counts={k: len(v) for k, v in indices.items()},
        epochs=len(history),
        best_epoch=best_epoch,
        failed=failed_list,
    )
