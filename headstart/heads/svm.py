"""The linear-SVM head: scikit-learn's `LinearSVC`, ``C`` chosen and probabilities calibrated on validation.

An SVM gives decision values, not probabilities. They are turned into probabilities by a softmax
over scaled decision values, ``softmax(a * d + b)`` with one slope ``a`` and one offset per class
``b``, fitted on the validation rows by minimising the log loss (for two classes, with
``d = [0, d1]``, this is Platt scaling: ``sigmoid(a * d1 + b1 - b0)``). The slope and offsets
fold into the SVM's weights, so a fitted head is saved exactly like logistic regression:
``coef`` (C, D) and ``intercept`` (C,), probabilities ``softmax(standardized X @ coef.T + intercept)``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from headstart.heads.base import (
    DTYPES,
    LinearHead,
    check_two_classes,
    class_weights,
    encode,
    fit_scaler,
    holdout,
    log_loss,
    softmax,
)
from headstart.heads.sources import ArraySource, RowSource, as_array

log = logging.getLogger(__name__)


class SVMHead(LinearHead):
    """Linear SVM (squared hinge, one-vs-rest) on standardized features; ``C`` of best validation accuracy.

    Without validation rows, ``validation_fraction`` of the training rows are held out to choose
    ``C`` and fit the probability scaling (the SVM is not refitted on them).
    """

    name = "svm"

    def __init__(
        self,
        *,
        C: float | None = None,
        Cs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
        max_iter: int = 2000,
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

    def fit(self, X, y, validation_data=None):
        """Fit on ``X, y``; choose ``C`` and calibrate on ``validation_data=(X_val, y_val)`` (else a holdout)."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=DTYPES)
        check_classification_targets(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, reset=False, dtype=DTYPES)
            return self._fit(X, y, Xv, column_or_1d(yv))
        split = holdout(y, self.validation_fraction, self.random_state)
        if split is None:
            return self._fit(X, y, None, None)
        tr, va = split
        return self._fit(X[tr], y[tr], X[va], y[va])

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        """Fit on a source; the SVM needs the training rows in memory."""
        X = as_array(train)
        if validation is None or not len(validation.labels):
            return self.fit(X, train.labels)
        return self.fit(X, train.labels, validation_data=(as_array(validation), validation.labels))

    def _decision(self, model: LinearSVC, Xs: np.ndarray) -> np.ndarray:
        d = model.decision_function(Xs)
        return np.stack([np.zeros_like(d), d], axis=1) if d.ndim == 1 else d

    def _fit(self, X, y, Xv, yv):
        self.classes_ = np.unique(y)
        check_two_classes(self.classes_)
        self.scaler_ = fit_scaler(self.standardize, ArraySource(X))
        Xs = self.scaler_.transform(X)
        y_idx = encode(y, self.classes_, "training")
        Cs = (
            [1e-2 if self.C is None else float(self.C)]
            if Xv is None
            else sorted(float(c) for c in ([self.C] if self.C is not None else self.Cs))
        )
        if Xv is not None:
            Xvs = self.scaler_.transform(Xv)
            yv_idx = encode(yv, self.classes_, "validation")
        history, best = [], None
        for C in Cs:
            model = LinearSVC(
                C=C,
                max_iter=self.max_iter,
                tol=self.tol,
                class_weight=self.class_weight,
                random_state=self.random_state,
                dual="auto",
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(Xs, y_idx)
            row = {
                "C": C,
                "accuracy": float(np.mean(self._decision(model, Xs).argmax(1) == y_idx)),
                "n_iter": int(np.max(model.n_iter_)),
            }
            if Xv is not None:
                dv = self._decision(model, Xvs)
                row["val_accuracy"] = float(np.mean(dv.argmax(1) == yv_idx))
                row["val_margin"] = float(np.mean(dv[np.arange(len(yv_idx)), yv_idx]))
                key = (row["val_accuracy"], row["val_margin"])
                if best is None or key > best[0]:
                    best = (key, C, model, dv)
            else:
                best = (None, C, model, None)
            history.append(row)
        _, self.C_, model, dv = best
        if dv is not None:
            slope, offset = fit_scaling(dv, yv_idx, class_weights(self.class_weight, self.classes_, y_idx))
        else:
            slope, offset = 1.0, np.zeros(len(self.classes_))
        coef = model.coef_.astype(np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: d = [0, d1]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        self.arrays_ = {
            "coef": (slope * coef).astype(np.float32),
            "intercept": (slope * intercept + offset).astype(np.float32),
        }
        self.n_iter_ = int(np.max(model.n_iter_))
        if Xv is not None:
            for row in history:
                if row["C"] == self.C_:
                    row["val_loss"] = log_loss(softmax(slope * dv + offset), yv_idx)
        self.history_ = history
        log.info("svm head: C=%g; probability slope %.3g", self.C_, slope)
        return self


def fit_scaling(d: np.ndarray, y_idx: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Slope ``a > 0`` and per-class offsets ``b`` minimising the log loss of ``softmax(a * d + b)``.

    The targets are Platt's smoothed ones (the true class ``(n_c + 1) / (n_c + 2)``, the rest shared
    by the other classes), so a validation split the SVM separates perfectly does not send the
    slope to infinity. Offsets have a small L2 penalty (they are only defined up to a constant, and
    a class missing from a small validation split must not get an offset of minus infinity).
    ``weights`` (one per class, from ``class_weight``) weigh the rows as the SVM's fit did.
    """
    n, c = d.shape
    onehot = smoothed_targets(y_idx, c)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)[y_idx]
    w = w / w.sum()
    scale = float(np.std(d)) or 1.0
    z = d / scale

    def loss(theta):
        a, b = np.exp(theta[0]), theta[1:]
        logits = a * z + b
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        p = np.exp(logits - lse[:, None])
        value = np.sum(w * (lse - np.sum(onehot * logits, axis=1))) + 1e-3 * np.sum(b**2)
        g_logits = (p - onehot) * w[:, None]
        grad = np.concatenate([[np.sum(g_logits * z) * a], g_logits.sum(axis=0) + 2e-3 * b])
        return value, grad

    res = minimize(loss, np.zeros(c + 1), jac=True, method="L-BFGS-B", bounds=[(-10, 10)] * (c + 1))
    return float(np.exp(res.x[0]) / scale), res.x[1:]


def smoothed_targets(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Platt's targets: the true class of a row of class ``c`` gets ``(n_c + 1) / (n_c + 2)``, the
    other classes share the rest equally (``n_c`` rows of class ``c`` among the rows given)."""
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    hit = (counts[y_idx] + 1) / (counts[y_idx] + 2)
    out = np.repeat(((1 - hit) / (n_classes - 1))[:, None], n_classes, axis=1)
    out[np.arange(len(y_idx)), y_idx] = hit
    return out
