"""The heads (softmax, logistic regression, MLP) as scikit-learn estimators, with save and load.

Every head has the same surface, so training, evaluation and prediction never ask which one
they hold: ``fit(X, y, validation_data=None)``, ``predict``, ``predict_proba`` (columns follow
``classes_``), ``random_state``, fitted state ending in ``_``. Each head standardizes its input
with statistics of the data it is fitted on (``scaler_``), so its callers pass raw features.

Beyond scikit-learn, ``fit_source`` / ``predict_proba_source`` take a `RowSource`: rows read a
block at a time, so the Keras heads can train on a cache larger than memory. `ArraySource`
wraps arrays; ``headstart.heads.runs`` adds one over the HDF5 cache.

The validation split picks the regularization strength of ``logreg`` and the stopping epoch of
``softmax`` and ``mlp``. Without ``validation_data``, ``validation_fraction`` of the training
rows is held out for it (stratified, seeded), like scikit-learn's ``MLPClassifier``.

Keras is imported inside ``fit`` and ``load_head``, never at import time.
"""

from __future__ import annotations

import copy
import json
import logging
import numbers
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from headstart.errors import HeadstartError

log = logging.getLogger(__name__)

_DTYPES = [np.float32, np.float64, np.float16]
PREDICT_ROWS = 8192
HEAD_JSON = "head.json"
SCALER_FILE = "standardization.npz"


class HeadError(HeadstartError):
    """The head asked for does not exist, or was given an option it does not take."""


# -- rows, a block at a time -------------------------------------------------------------------


class RowSource(Protocol):
    """Rows of features with their labels, readable a block at a time or by position.

    ``blocks`` are ``(start, stop)`` position ranges covering ``0..len(labels)`` in order;
    reading one block is cheap (it may return a view). ``gather`` returns a new float32 array
    of the rows at the given positions. ``shuffle_window`` is how many blocks an epoch may mix
    at once (all of them for arrays in memory; a few for a file).
    """

    labels: np.ndarray
    n_features: int
    blocks: Sequence[tuple[int, int]]
    shuffle_window: int

    def read_block(self, b: int) -> np.ndarray: ...

    def gather(self, positions: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """A `RowSource` over an array in memory (any float dtype; rows come out as float32)."""

    def __init__(
        self, X: np.ndarray, y: np.ndarray | None = None, rows: np.ndarray | None = None, block_rows: int = 1024
    ):
        self._X = X
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = len(X) if rows is None else len(self._rows)
        full = np.zeros(len(X), dtype=np.int64) if y is None else np.asarray(y)
        self.labels = full if rows is None else full[self._rows]
        self.n_features = int(X.shape[1])
        self.blocks = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]
        self.shuffle_window = max(1, len(self.blocks))

    def __len__(self) -> int:
        return len(self.labels)

    def read_block(self, b: int) -> np.ndarray:
        start, stop = self.blocks[b]
        if self._rows is None:
            return np.asarray(self._X[start:stop], dtype=np.float32)
        return np.asarray(self._X[self._rows[start:stop]], dtype=np.float32)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        idx = positions if self._rows is None else self._rows[positions]
        return np.asarray(self._X[idx], dtype=np.float32)

    def array(self) -> np.ndarray:
        """All rows at their own dtype (no copy when the source has no row subset)."""
        return self._X if self._rows is None else self._X[self._rows]


def _as_array(source: RowSource) -> np.ndarray:
    if isinstance(source, ArraySource):
        return source.array()
    if not source.blocks:
        return np.zeros((0, source.n_features), dtype=np.float32)
    return np.concatenate(list(iter_blocks(source)))


def iter_blocks(source: RowSource) -> Iterator[np.ndarray]:
    for b in range(len(source.blocks)):
        yield source.read_block(b)


# -- standardization ---------------------------------------------------------------------------


class Standardizer:
    """Per-feature ``(x - mean) / scale``; statistics from the training rows only."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)

    @classmethod
    def identity(cls, n_features: int) -> "Standardizer":
        return cls(np.zeros(n_features), np.ones(n_features))

    @classmethod
    def fit_blocks(cls, blocks: Iterator[np.ndarray], n_features: int) -> "Standardizer":
        """Mean and standard deviation over blocks of rows (Chan's merge, float64 accumulators)."""
        n = 0
        mean = np.zeros(n_features, dtype=np.float64)
        m2 = np.zeros(n_features, dtype=np.float64)
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            k = len(block)
            if k == 0:
                continue
            b_mean = block.mean(axis=0, dtype=np.float64)
            d = block - b_mean.astype(block.dtype)
            b_m2 = np.einsum("ij,ij->j", d, d, dtype=np.float64)
            delta = b_mean - mean
            total = n + k
            mean += delta * (k / total)
            m2 += b_m2 + delta**2 * (n * k / total)
            n = total
        std = np.sqrt(m2 / max(n, 1))
        std[~(std > 1e-12)] = 1.0  # constant features pass through unscaled
        return cls(mean, std)

    def transform(self, X: np.ndarray, copy: bool = True) -> np.ndarray:
        """Standardized float32 rows; with ``copy=False`` a float32 ``X`` is overwritten in place."""
        out = np.array(X, dtype=np.float32, copy=True if copy else None)
        out -= self.mean
        out /= self.scale
        return out

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale)

    @classmethod
    def load(cls, path: Path) -> "Standardizer":
        with np.load(path) as z:
            return cls(z["mean"], z["scale"])


# -- shared helpers ----------------------------------------------------------------------------


def _fit_scaler(standardize: bool, source: RowSource) -> Standardizer:
    if not standardize:
        return Standardizer.identity(source.n_features)
    return Standardizer.fit_blocks(iter_blocks(source), source.n_features)


def _seed(random_state) -> int | None:
    """An int seed for Keras from a scikit-learn ``random_state`` (None stays None)."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


def _holdout(labels: np.ndarray, fraction: float, random_state) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified (train, validation) positions, or None when the rows are too few to hold out."""
    if not fraction:
        return None
    _, counts = np.unique(labels, return_counts=True)
    n_val = int(np.ceil(fraction * len(labels)))
    if counts.min() < 2 or n_val < len(counts) or len(labels) - n_val < len(counts):
        return None
    sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=_seed(random_state) or 0)
    tr, va = next(sss.split(np.zeros((len(labels), 1)), labels))
    return np.sort(tr), np.sort(va)


def _check_two_classes(classes: np.ndarray) -> None:
    if len(classes) < 2:
        raise ValueError(
            "Expected training samples of at least two classes. "
            f"Received: one class ({classes[0]!r}); a classifier needs two or more."
        )


def _encode(labels: np.ndarray, classes: np.ndarray, what: str) -> np.ndarray:
    idx = np.searchsorted(classes, labels)
    idx = np.clip(idx, 0, len(classes) - 1)
    if len(labels) and not np.all(classes[idx] == labels):
        unknown = sorted(set(np.asarray(labels).tolist()) - set(classes.tolist()))
        raise ValueError(f"Expected {what} labels among the training classes {classes.tolist()}. Received: {unknown}.")
    return idx.astype(np.int64)


def _class_weights(class_weight, classes: np.ndarray, y_idx: np.ndarray) -> np.ndarray | None:
    """Weight per class index, or None."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"Expected class_weight None, 'balanced' or a dict. Received: {class_weight!r}.")
        return compute_class_weight("balanced", classes=np.arange(len(classes)), y=y_idx)
    return np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])


def _check_positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
    if not ok:
        what = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected {name} to be {what} {bound}. Received: {value!r}.")


def _check_fraction(name: str, value) -> None:
    if value is not None and not (isinstance(value, numbers.Real) and 0 <= value < 1):
        raise ValueError(f"Expected {name} in [0, 1). Received: {value!r}.")


# -- Keras heads -------------------------------------------------------------------------------


_BATCHES_CLASS = None


def _batches_class():
    """`keras.utils.PyDataset` over a `RowSource`, defined on first use so Keras loads lazily."""
    global _BATCHES_CLASS
    if _BATCHES_CLASS is not None:
        return _BATCHES_CLASS
    import keras

    class Batches(keras.utils.PyDataset):
        """Standardized batches of a `RowSource`; shuffled a window of blocks at a time."""

        def __init__(self, source, y_idx, scaler, batch_size, shuffle, seed):
            super().__init__(workers=1, use_multiprocessing=False)
            self.source, self.y_idx, self.scaler = source, y_idx, scaler
            self.batch_size, self.shuffle = batch_size, shuffle
            self.rng = np.random.default_rng(seed)
            self.order = self._plan()

        def _plan(self) -> np.ndarray:
            n = len(self.y_idx)
            if not self.shuffle:
                return np.arange(n)
            blocks, w = self.source.blocks, self.source.shuffle_window
            perm = self.rng.permutation(len(blocks))
            parts = []
            for i in range(0, len(perm), w):
                pos = np.concatenate([np.arange(*blocks[b]) for b in perm[i : i + w]])
                parts.append(self.rng.permutation(pos))
            return np.concatenate(parts) if parts else np.arange(0)

        def __len__(self) -> int:
            return -(-len(self.y_idx) // self.batch_size)

        def __getitem__(self, i):
            pos = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            return self.scaler.transform(self.source.gather(pos), copy=False), self.y_idx[pos]

        def on_epoch_end(self) -> None:
            if self.shuffle:
                self.order = self._plan()

    class ValidationScore(keras.callbacks.Callback):
        """Adds ``val_loss`` and ``val_accuracy`` to each epoch's logs, for early stopping.

        Computed with direct model calls on standardized blocks: the same numbers as
        ``model.evaluate`` (loss clipped at 1e-7 as Keras does), at a fraction of its cost per epoch.
        """

        def __init__(self, source, y_idx, scaler, class_weights=None):
            super().__init__()
            self.source, self.y_idx, self.scaler = source, y_idx, scaler
            self.class_weights = class_weights

        def on_epoch_end(self, epoch, logs=None):
            p = np.concatenate(
                [
                    keras.ops.convert_to_numpy(self.model(self.scaler.transform(b), training=False))
                    for b in iter_blocks(self.source)
                ]
            )
            if logs is not None:
                logs["val_loss"] = _log_loss(p, self.y_idx, self.class_weights, eps=1e-7)
                logs["val_accuracy"] = float(np.mean(p.argmax(axis=1) == self.y_idx))

    Batches.ValidationScore = ValidationScore
    _BATCHES_CLASS = Batches
    return Batches


class _Head(ClassifierMixin, BaseEstimator):
    """What every head shares: prediction from ``_proba_rows`` (standardized rows → probabilities),
    a block of rows at a time."""

    def _proba_rows(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """Probability of each class, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=_DTYPES)
        return np.concatenate([self._proba_rows(X[s : s + PREDICT_ROWS]) for s in range(0, len(X), PREDICT_ROWS)])

    def predict_proba_source(self, source: RowSource) -> np.ndarray:
        check_is_fitted(self)
        parts = [self._proba_rows(block) for block in iter_blocks(source)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class _KerasHead(_Head):
    """Shared fitting, prediction and pickling of the Keras heads; subclasses build the model."""

    _name = ""

    def _build(self, keras, n_features: int, n_classes: int, seed: int | None):  # pragma: no cover
        raise NotImplementedError

    def _check_params(self) -> None:
        _check_positive("epochs", self.epochs, integer=True)
        if self.batch_size != "auto":
            _check_positive("batch_size", self.batch_size, integer=True)
        _check_positive("learning_rate", self.learning_rate)
        _check_positive("patience", self.patience, integer=True, allow_zero=True)
        _check_fraction("validation_fraction", self.validation_fraction)
        if self.class_weight is not None and not isinstance(self.class_weight, (str, Mapping)):
            raise ValueError(f"Expected class_weight None, 'balanced' or a dict. Received: {self.class_weight!r}.")

    def fit(self, X, y, validation_data=None):
        """Fit on ``X, y``; stop early on the loss of ``validation_data=(X_val, y_val)``."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=_DTYPES)
        check_classification_targets(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, reset=False, dtype=_DTYPES)
            return self._fit(ArraySource(X, y), ArraySource(Xv, column_or_1d(yv)))
        split = _holdout(y, self.validation_fraction, self.random_state)
        if split is None:
            return self._fit(ArraySource(X, y), None)
        return self._fit(ArraySource(X, y, rows=split[0]), ArraySource(X, y, rows=split[1]))

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        """Fit on rows read a block at a time (a cache larger than memory)."""
        self._check_params()
        self.n_features_in_ = int(train.n_features)
        check_classification_targets(train.labels)
        return self._fit(train, validation)

    def _fit(self, train: RowSource, validation: RowSource | None):
        self.classes_ = np.unique(train.labels)
        _check_two_classes(self.classes_)
        y_idx = _encode(train.labels, self.classes_, "training")

        import keras

        seed = _seed(self.random_state)
        if seed is not None:
            keras.utils.set_random_seed(seed)
        self.scaler_ = _fit_scaler(self.standardize, train)
        model = self._build(keras, train.n_features, len(self.classes_), seed)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        Batches = _batches_class()
        self.batch_size_ = _auto_batch(len(y_idx)) if self.batch_size == "auto" else self.batch_size
        data = Batches(train, y_idx, self.scaler_, self.batch_size_, True, seed)
        weights = _class_weights(self.class_weight, self.classes_, y_idx)
        callbacks = []
        if validation is not None and len(validation.labels):
            val_idx = _encode(validation.labels, self.classes_, "validation")
            callbacks = [
                Batches.ValidationScore(validation, val_idx, self.scaler_, weights),
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience, restore_best_weights=True),
            ]
        hist = model.fit(
            data,
            epochs=self.epochs,
            shuffle=False,  # Batches shuffles rows itself, a window of blocks at a time; keep its order
            callbacks=callbacks,
            class_weight=None if weights is None else dict(enumerate(weights.tolist())),
            verbose=0,
        )
        h = hist.history
        n_epochs = len(h.get("loss", []))
        self.history_ = [
            {"epoch": e + 1, **{k: float(v[e]) for k, v in h.items() if k in _HISTORY_KEYS}} for e in range(n_epochs)
        ]
        if "val_loss" in h:
            self.best_epoch_ = int(np.argmin(h["val_loss"])) + 1
        else:
            self.best_epoch_ = n_epochs
        self.n_iter_ = n_epochs
        self.model_ = model
        log.info("%s head: %d epochs, best %d", self._name, n_epochs, self.best_epoch_)
        if callbacks and self.best_epoch_ == self.epochs:
            log.warning(
                "%s head: the validation loss was still falling at the last of %d epochs; "
                "raise --epochs or --learning-rate", self._name, self.epochs,
            )
        return self

    def _proba_rows(self, X: np.ndarray) -> np.ndarray:
        import keras

        out = self.model_(self.scaler_.transform(X), training=False)
        p = keras.ops.convert_to_numpy(out).astype(np.float64)
        return p / p.sum(axis=1, keepdims=True)


    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


_HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy"}


def _auto_batch(n_train: int) -> int:
    """About 50 steps an epoch, between 16 and 256 rows a step: small datasets still take
    enough optimizer steps to converge, large ones keep steps few and cheap."""
    return int(min(256, max(16, n_train // 50)))


class SoftmaxHead(_KerasHead):
    """One ``Dense(num_classes, softmax)`` layer, trained with Adam, early stopping on validation loss.

    The new classification layer of the classic VGG16 transfer-learning recipe, on
    standardized features.
    """

    _name = "softmax"

    def __init__(
        self,
        *,
        epochs: int = 100,
        batch_size: int | str = "auto",
        learning_rate: float = 1e-3,
        patience: int = 5,
        validation_fraction: float = 0.1,
        class_weight=None,
        standardize: bool = True,
        random_state=0,
    ):
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.standardize = standardize
        self.random_state = random_state

    def _build(self, keras, n_features, n_classes, seed):
        inputs = keras.Input((n_features,), name="features")
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(inputs)
        return keras.Model(inputs, outputs, name="softmax_head")


class MLPHead(_KerasHead):
    """A small MLP: one hidden ReLU layer (256 units), dropout 0.5, softmax; early stopping."""

    _name = "mlp"

    def __init__(
        self,
        *,
        hidden_units: int = 256,
        dropout: float = 0.5,
        epochs: int = 100,
        batch_size: int | str = "auto",
        learning_rate: float = 1e-3,
        patience: int = 5,
        validation_fraction: float = 0.1,
        class_weight=None,
        standardize: bool = True,
        random_state=0,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.standardize = standardize
        self.random_state = random_state

    def _check_params(self) -> None:
        super()._check_params()
        _check_positive("hidden_units", self.hidden_units, integer=True)
        _check_fraction("dropout", self.dropout)

    def _build(self, keras, n_features, n_classes, seed):
        inputs = keras.Input((n_features,), name="features")
        x = keras.layers.Dense(self.hidden_units, activation="relu", name="hidden")(inputs)
        x = keras.layers.Dropout(self.dropout, seed=seed, name="dropout")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
        return keras.Model(inputs, outputs, name="mlp_head")


# -- logistic regression -----------------------------------------------------------------------


def _log_loss(p: np.ndarray, y_idx: np.ndarray, weights: np.ndarray | None = None, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of the true class (class-weighted when ``weights`` is given)."""
    ll = -np.log(np.clip(p[np.arange(len(y_idx)), y_idx], eps, 1.0))
    if weights is None:
        return float(ll.mean())
    w = weights[y_idx]
    return float((ll * w).sum() / w.sum())


class LogRegHead(_Head):
    """Multinomial logistic regression on standardized features; ``C`` chosen on validation.

    With ``C=None`` the regularization path ``Cs`` is fitted from strongest to weakest (each fit
    warm-started from the last) and the ``C`` of least validation log loss is kept;
    ``history_`` holds the whole path.
    """

    _name = "logreg"

    def __init__(
        self,
        *,
        C: float | None = None,
        Cs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
        max_iter: int = 500,
        tol: float = 1e-4,
        validation_fraction: float = 0.15,
        class_weight=None,
        standardize: bool = True,
        random_state=0,
    ):
        self.C = C
        self.Cs = Cs
        self.max_iter = max_iter
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.standardize = standardize
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.C is not None:
            _check_positive("C", self.C)
        if not len(self.Cs):
            raise ValueError("Expected at least one value in Cs. Received: an empty sequence.")
        for c in self.Cs:
            _check_positive("each of Cs", c)
        _check_positive("max_iter", self.max_iter, integer=True)
        _check_positive("tol", self.tol)
        _check_fraction("validation_fraction", self.validation_fraction)
        if self.class_weight is not None and not isinstance(self.class_weight, (str, Mapping)):
            raise ValueError(f"Expected class_weight None, 'balanced' or a dict. Received: {self.class_weight!r}.")

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(
            C=C,
            max_iter=self.max_iter,
            tol=self.tol,
            class_weight=self.class_weight,
            random_state=self.random_state,
            warm_start=True,
        )

    def fit(self, X, y, validation_data=None):
        """Fit on ``X, y``; choose ``C`` on ``validation_data=(X_val, y_val)``."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=_DTYPES)
        check_classification_targets(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, reset=False, dtype=_DTYPES)
            return self._fit(X, y, Xv, column_or_1d(yv), refit=False)
        split = None if self.C is not None else _holdout(y, self.validation_fraction, self.random_state)
        if split is None:
            return self._fit(X, y, None, None, refit=False)
        tr, va = split
        return self._fit(X, y, X[va], y[va], refit=True, train_rows=tr)

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        """Fit on a source; logistic regression needs the training rows in memory."""
        X = _as_array(train)
        if validation is None or not len(validation.labels):
            return self.fit(X, train.labels)
        Xv = _as_array(validation)
        return self.fit(X, train.labels, validation_data=(Xv, validation.labels))

    def _fit(self, X, y, Xv, yv, *, refit: bool, train_rows: np.ndarray | None = None):
        self.classes_ = np.unique(y)
        _check_two_classes(self.classes_)
        X_fit, y_fit = (X, y) if train_rows is None else (X[train_rows], y[train_rows])
        self.scaler_ = _fit_scaler(self.standardize, ArraySource(X_fit))
        Xs = self.scaler_.transform(X_fit)
        y_idx = _encode(y_fit, self.classes_, "training")
        weights = _class_weights(self.class_weight, self.classes_, y_idx)
        if Xv is None:
            Cs = [1.0 if self.C is None else float(self.C)]
        else:
            Cs = sorted(float(c) for c in ([self.C] if self.C is not None else self.Cs))
            Xvs = self.scaler_.transform(Xv)
            yv_idx = _encode(yv, self.classes_, "validation")
        model = self._model(Cs[0])
        history, best = [], None
        for C in Cs:
            model.set_params(C=C)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(Xs, y_fit)
            n_iter = int(np.max(model.n_iter_))
            p = model.predict_proba(Xs)
            row = {
                "C": C,
                "loss": _log_loss(p, y_idx),
                "accuracy": float(np.mean(p.argmax(1) == y_idx)),
                "n_iter": n_iter,
                "converged": n_iter < self.max_iter,
            }
            if Xv is not None:
                pv = model.predict_proba(Xvs)
                row["val_loss"] = _log_loss(pv, yv_idx, weights)
                row["val_accuracy"] = float(np.mean(pv.argmax(1) == yv_idx))
                if best is None or row["val_loss"] < best[0]:
                    best = (row["val_loss"], C, copy.deepcopy(model))
            else:
                best = (None, C, model)
            history.append(row)
        _, self.C_, model = best
        del Xs
        if refit:
            self.scaler_ = _fit_scaler(self.standardize, ArraySource(X))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(self.scaler_.transform(X), y)
        if int(np.max(model.n_iter_)) >= self.max_iter:
            log.warning("logreg did not converge in %d iterations at C=%g; raise max_iter", self.max_iter, self.C_)
        self.model_ = model
        self.history_ = history
        self.n_iter_ = int(np.max(model.n_iter_))
        log.info("logreg head: C=%g chosen from %s", self.C_, Cs)
        return self

    def _proba_rows(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(self.scaler_.transform(X))



# -- registry, save, load ----------------------------------------------------------------------


HEADS: dict[str, type] = {"softmax": SoftmaxHead, "logreg": LogRegHead, "mlp": MLPHead}


def head_names() -> list[str]:
    return list(HEADS)


def head_name(head) -> str:
    """The registry name of a head instance (``"softmax"``, ``"logreg"``, ``"mlp"``)."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise HeadError(f"Expected a head among {', '.join(HEADS)}. Received: {type(head).__name__}.")


def head_params(name: str) -> list[str]:
    """Names of the options a head takes."""
    return sorted(_head_class(name)._get_param_names())


def _head_class(name: str) -> type:
    try:
        return HEADS[name]
    except KeyError:
        raise HeadError(f"Expected a head among {', '.join(HEADS)}. Received: {name!r}.") from None


def make_head(name: str, **params: Any):
    """A new, unfitted head by name, with options checked now rather than at ``fit``."""
    cls = _head_class(name)
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise HeadError(
            f"Head {name!r} takes no option {', '.join(unknown)}. It takes: {', '.join(head_params(name))}."
        )
    head = cls(**params)
    try:
        head._check_params()
    except ValueError as err:
        raise HeadError(f"Bad option for head {name!r}: {err}") from None
    return head


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {"__pairs__": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"__repr__": repr(value)}


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__pairs__" in value:
            return {_from_json(k): _from_json(v) for k, v in value["__pairs__"]}
        return None  # a value that JSON cannot hold (a RandomState): left at None
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def head_params_json(head) -> dict[str, Any]:
    """The head's options as JSON-ready values (for ``run.json``)."""
    return {k: _to_json(v) for k, v in head.get_params().items()}


def save_head(head, folder: str | Path) -> list[Path]:
    """Write a fitted head into ``folder``: ``head.json``, ``standardization.npz`` and the model.

    The model is ``head.keras`` for the Keras heads and ``head.joblib`` (the fitted scikit-learn
    ``LogisticRegression``) for ``logreg``. Returns the files written.
    """
    check_is_fitted(head)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = head_name(head)
    fitted = {k: _to_json(getattr(head, k)) for k in ("n_iter_", "best_epoch_", "C_") if hasattr(head, k)}
    meta = {
        "head": name,
        "params": head_params_json(head),
        "classes": np.asarray(head.classes_).tolist(),
        "n_features": int(head.n_features_in_),
        "fitted": fitted,
        "history": head.history_,
    }
    files = [folder / HEAD_JSON, folder / SCALER_FILE]
    head.scaler_.save(files[1])
    if isinstance(head, _KerasHead):
        files.append(folder / "head.keras")
        head.model_.save(files[-1])
    else:
        files.append(folder / "head.joblib")
        joblib.dump(head.model_, files[-1])
    files[0].write_text(json.dumps(meta, indent=2) + "\n")
    return files


def load_head(folder: str | Path):
    """Read back a head written by `save_head`; it predicts exactly as it did when saved."""
    folder = Path(folder)
    meta_path = folder / HEAD_JSON
    if not meta_path.exists():
        raise HeadError(f"Expected a saved head in {folder}. Received: no {HEAD_JSON} there.")
    meta = json.loads(meta_path.read_text())
    cls = _head_class(meta["head"])
    params = {k: _from_json(v) for k, v in meta["params"].items() if k in cls._get_param_names()}
    head = cls(**params)
    head.classes_ = np.asarray(meta["classes"])
    head.n_features_in_ = int(meta["n_features"])
    head.history_ = meta.get("history", [])
    for k, v in meta.get("fitted", {}).items():
        setattr(head, k, v)
    head.scaler_ = Standardizer.load(folder / SCALER_FILE)
    if issubclass(cls, _KerasHead):
        import keras

        head.model_ = keras.saving.load_model(folder / "head.keras", compile=False)
    else:
        head.model_ = joblib.load(folder / "head.joblib")
    return head
