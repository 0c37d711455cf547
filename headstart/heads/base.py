"""What every head shares: the scikit-learn surface, parameter checks, and arrays in, arrays out.

A head is a scikit-learn classifier (``fit`` returns ``self``; ``predict_proba`` columns follow
``classes_``; fitted state ends in ``_``) that standardizes its input with the statistics of the
rows it was fitted on (``scaler_``) and predicts with NumPy from arrays (``arrays_``), so a saved
head is arrays and JSON, never code, and predicting never needs Keras. ``to_keras()`` rebuilds the
same function as a Keras model (standardization included) for export.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted, validate_data

from headstart.heads.sources import RowSource, Standardizer, iter_blocks

DTYPES = [np.float32, np.float64, np.float16]
FITTED_KEYS = ("n_iter_", "best_epoch_", "C_", "k_", "n_rows_", "temperature_")
PREDICT_ROWS = 8192


class Head(ClassifierMixin, BaseEstimator):
    """Base of the heads: prediction a block of rows at a time from ``_proba_rows``.

    Subclasses define ``_logits_rows`` (raw rows → scores whose softmax is the probabilities),
    ``array_shapes`` (the names and shapes of the fitted arrays that `save_head` writes) and
    ``_keras_logits`` (the same scores from Keras' own layers).

    A fitted head may carry ``temperature_`` (set by `headstart.heads.calibration`): its scores
    are divided by it before the softmax, in NumPy and in ``to_keras()`` alike.
    """

    name = ""

    def _logits_rows(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @property
    def temperature(self) -> float:
        """The fitted temperature (1.0 when the head is not calibrated)."""
        return float(getattr(self, "temperature_", None) or 1.0)

    def _proba_rows(self, X: np.ndarray) -> np.ndarray:
        return softmax(self._logits_rows(X) / self.temperature)

    def logits_source(self, source: RowSource) -> np.ndarray:
        """The scores (before temperature and softmax) of every row of a source."""
        check_is_fitted(self)
        parts = [self._logits_rows(block) for block in iter_blocks(source)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)))

    def array_shapes(self, n_features: int, n_classes: int) -> dict[str, tuple[int, ...]]:  # pragma: no cover
        """Names and shapes of the arrays of a fitted head (what ``arrays_`` holds)."""
        raise NotImplementedError

    def check_arrays(self, arrays: Mapping[str, np.ndarray]) -> str | None:
        """What is wrong with loaded arrays beyond names, shapes and finiteness (None: nothing)."""
        return None

    def predict_proba(self, X) -> np.ndarray:
        """Probability of each class, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=DTYPES)
        return np.concatenate([self._proba_rows(X[s : s + PREDICT_ROWS]) for s in range(0, len(X), PREDICT_ROWS)])

    def predict_proba_source(self, source: RowSource) -> np.ndarray:
        check_is_fitted(self)
        parts = [self._proba_rows(block) for block in iter_blocks(source)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def to_keras(self):
        """A Keras model from raw feature rows (float32) to class probabilities, built from Keras'
        own layers only (it loads in safe mode anywhere): standardization, then the head."""
        import keras

        check_is_fitted(self)
        d = int(self.n_features_in_)
        inputs = keras.Input((d,), name="features")
        # (x - mean) / scale as a BatchNormalization at inference (epsilon 0, gamma 1, beta 0): the
        # statistics are weights, not constants in the config, so tf2onnx and LiteRT keep them too
        # (a Normalization layer's mean became a missing ONNX input).
        standardize = keras.layers.BatchNormalization(epsilon=0.0, name="standardization", trainable=False)
        standardize.build((None, d))
        standardize.set_weights(
            [
                np.ones(d, np.float32),
                np.zeros(d, np.float32),
                self.scaler_.mean.reshape(d),
                np.square(self.scaler_.scale).reshape(d),
            ]
        )
        x = standardize(inputs)
        outputs = self._keras_layers(keras, x)
        return keras.Model(inputs, outputs, name=f"{self.name}_head")

    def _keras_layers(self, keras, x):
        """Scores, divided by the temperature when there is one, then softmax."""
        z = self._keras_logits(keras, x)
        if self.temperature != 1.0:
            z = keras.layers.Rescaling(1.0 / self.temperature, name="temperature")(z)
        return keras.layers.Activation("softmax", name="probabilities")(z)

    def _keras_logits(self, keras, x):  # pragma: no cover
        raise NotImplementedError


class LinearHead(Head):
    """A head that is ``coef`` (C, D) and ``intercept`` (C,) on standardized rows, ``C`` chosen on
    validation among ``Cs`` (logistic regression, linear SVM): their options, arrays and scores."""

    def _check_params(self) -> None:
        if self.C is not None:
            check_positive("C", self.C)
        if isinstance(self.Cs, (str, bytes)) or not hasattr(self.Cs, "__len__") or not len(self.Cs):
            raise ValueError(f"Expected at least one value in Cs. Received: {self.Cs!r}.")
        for c in self.Cs:
            check_positive("each of Cs", c)
        check_positive("max_iter", self.max_iter, integer=True)
        check_positive("tol", self.tol)
        check_fraction("validation_fraction", self.validation_fraction)
        check_class_weight(self.class_weight)

    def array_shapes(self, n_features: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        return {"coef": (n_classes, n_features), "intercept": (n_classes,)}

    def _logits_rows(self, X: np.ndarray) -> np.ndarray:
        a = self.arrays_
        return self.scaler_.transform(X) @ a["coef"].T + a["intercept"]

    def _keras_logits(self, keras, x):
        a = self.arrays_
        return dense(keras, "predictions", a["coef"].T, a["intercept"])(x)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def dense(keras, name: str, kernel: np.ndarray, bias: np.ndarray, activation: str | None = None):
    """A Keras ``Dense`` layer holding the given weights."""
    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel, bias])
    return layer


def fit_scaler(standardize: bool, source: RowSource) -> Standardizer:
    if not standardize:
        return Standardizer.identity(source.n_features)
    return Standardizer.fit_blocks(iter_blocks(source), source.n_features)


def seed_of(random_state) -> int | None:
    """An int seed for Keras from a scikit-learn ``random_state`` (None stays None)."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


def holdout(labels: np.ndarray, fraction: float, random_state) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified (train, validation) positions, or None when the rows are too few to hold out."""
    if not fraction:
        return None
    _, counts = np.unique(labels, return_counts=True)
    n_val = int(np.ceil(fraction * len(labels)))
    if counts.min() < 2 or n_val < len(counts) or len(labels) - n_val < len(counts):
        return None
    sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed_of(random_state) or 0)
    tr, va = next(sss.split(np.zeros((len(labels), 1)), labels))
    return np.sort(tr), np.sort(va)


def check_two_classes(classes: np.ndarray) -> None:
    if len(classes) < 2:
        raise ValueError(
            "Expected training samples of at least two classes. "
            f"Received: one class ({classes[0]!r}); a classifier needs two or more."
        )


def encode(labels: np.ndarray, classes: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``labels`` in the sorted ``classes``; a label not among them is a ValueError."""
    idx = np.searchsorted(classes, labels)
    idx = np.clip(idx, 0, len(classes) - 1)
    if len(labels) and not np.all(classes[idx] == labels):
        unknown = sorted(set(np.asarray(labels).tolist()) - set(classes.tolist()))
        raise ValueError(f"Expected {what} labels among the training classes {classes.tolist()}. Received: {unknown}.")
    return idx.astype(np.int64)


def class_weights(class_weight, classes: np.ndarray, y_idx: np.ndarray) -> np.ndarray | None:
    """Weight per class index, or None."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"Expected class_weight None, 'balanced' or a dict. Received: {class_weight!r}.")
        return compute_class_weight("balanced", classes=np.arange(len(classes)), y=y_idx)
    return np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])


def log_loss(p: np.ndarray, y_idx: np.ndarray, weights: np.ndarray | None = None, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of the true class (class-weighted when ``weights`` is given)."""
    ll = -np.log(np.clip(p[np.arange(len(y_idx)), y_idx], eps, 1.0))
    if weights is None:
        return float(ll.mean())
    w = weights[y_idx]
    return float((ll * w).sum() / w.sum())


def check_positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
    if not ok or (not integer and not np.isfinite(value)):
        what = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected {name} to be {what} {bound}. Received: {value!r}.")


def check_fraction(name: str, value) -> None:
    if value is not None and not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1):
        raise ValueError(f"Expected {name} in [0, 1). Received: {value!r}.")


def check_class_weight(value) -> None:
    if value is None or value == "balanced":
        return
    if isinstance(value, Mapping) and all(
        isinstance(w, numbers.Real) and not isinstance(w, bool) and np.isfinite(w) and w > 0 for w in value.values()
    ):
        return
    raise ValueError(f"Expected class_weight None, 'balanced' or a dict of positive weights. Received: {value!r}.")


def fitted_info(head) -> dict[str, Any]:
    """What fitting chose (``C_``, ``best_epoch_``, ``n_iter_``) as JSON-ready values."""
    out = {}
    for k in FITTED_KEYS:
        if hasattr(head, k):
            v = getattr(head, k)
            out[k] = v.item() if isinstance(v, np.generic) else v
    return out
