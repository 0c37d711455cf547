"""The logistic-regression head: scikit-learn's multinomial `LogisticRegression`, ``C`` chosen on validation.

Once fitted it is two arrays: ``coef`` (C, D) and ``intercept`` (C,) with probabilities
``softmax(standardized X @ coef.T + intercept)`` (a binary model's single row becomes
``[0, w]``, which gives the same probabilities as its sigmoid).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
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
)
from headstart.heads.sources import ArraySource, RowSource, as_array

log = logging.getLogger(__name__)


class LogRegHead(LinearHead):
    """Multinomial logistic regression on standardized features; ``C`` chosen on validation.

    With ``C=None`` the regularization path ``Cs`` is fitted from strongest to weakest (each fit
    warm-started from the last) and the ``C`` of least validation log loss is kept;
    ``history_`` holds the whole path.
    """

    name = "logreg"

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
        X, y = validate_data(self, X, y, dtype=DTYPES)
        check_classification_targets(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, reset=False, dtype=DTYPES)
            return self._fit(X, y, Xv, column_or_1d(yv), refit=False)
        split = None if self.C is not None else holdout(y, self.validation_fraction, self.random_state)
        if split is None:
            return self._fit(X, y, None, None, refit=False)
        tr, va = split
        return self._fit(X, y, X[va], y[va], refit=True, train_rows=tr)

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        """Fit on a source; logistic regression needs the training rows in memory."""
        X = as_array(train)
        if validation is None or not len(validation.labels):
            return self.fit(X, train.labels)
        Xv = as_array(validation)
        return self.fit(X, train.labels, validation_data=(Xv, validation.labels))

    def _fit(self, X, y, Xv, yv, *, refit: bool, train_rows: np.ndarray | None = None):
        self.classes_ = np.unique(y)
        check_two_classes(self.classes_)
        X_fit, y_fit = (X, y) if train_rows is None else (X[train_rows], y[train_rows])
        self.scaler_ = fit_scaler(self.standardize, ArraySource(X_fit))
        Xs = self.scaler_.transform(X_fit)
        y_idx = encode(y_fit, self.classes_, "training")
        weights = class_weights(self.class_weight, self.classes_, y_idx)
        if Xv is None:
            Cs = [1.0 if self.C is None else float(self.C)]
        else:
            Cs = sorted(float(c) for c in ([self.C] if self.C is not None else self.Cs))
            Xvs = self.scaler_.transform(Xv)
            yv_idx = encode(yv, self.classes_, "validation")
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
                "loss": log_loss(p, y_idx),
                "accuracy": float(np.mean(p.argmax(1) == y_idx)),
                "n_iter": n_iter,
                "converged": n_iter < self.max_iter,
            }
            if Xv is not None:
                pv = model.predict_proba(Xvs)
                row["val_loss"] = log_loss(pv, yv_idx, weights)
                row["val_accuracy"] = float(np.mean(pv.argmax(1) == yv_idx))
                if best is None or row["val_loss"] < best[0]:
                    best = (row["val_loss"], C, copy.deepcopy(model))
            else:
                best = (None, C, model)
            history.append(row)
        _, self.C_, model = best
        del Xs
        if refit:
            self.scaler_ = fit_scaler(self.standardize, ArraySource(X))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(self.scaler_.transform(X), y)
        if int(np.max(model.n_iter_)) >= self.max_iter:
            log.warning("logreg did not converge in %d iterations at C=%g; raise max_iter", self.max_iter, self.C_)
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([0, z])
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        self.arrays_ = {"coef": coef.astype(np.float32), "intercept": intercept.astype(np.float32)}
        self.history_ = history
        self.n_iter_ = int(np.max(model.n_iter_))
        log.info("logreg head: C=%g chosen from %s", self.C_, Cs)
        return self
