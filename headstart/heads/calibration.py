"""Calibrating a fitted head's probabilities on rows it never saw: temperature scaling.

One number ``T > 0`` divides the head's scores before the softmax (``softmax(z / T)``); it is
chosen by minimising the log loss of the ``calib`` split (a bounded 1-D search over ``log T``),
so the predicted class never changes, only how sure the head says it is. The ``calib`` rows are
a share of the training split set aside before fitting (`headstart.heads.split.carve_calibration`),
or, with cross-fitting (`crossfit_logits`), every training row scored by a head fitted without it:
never the validation rows, which early stopping and the choice of ``C`` or ``k`` already used and
on which a head looks better calibrated than it is. Any head
takes it (its ``_logits_rows``); it is saved in ``head.json`` (``fitted.temperature_``) and used by
``predict_proba`` (so ``evaluate``, ``predict``) and by ``to_keras()`` (a ``Rescaling`` layer).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from headstart.errors import HeadError
from headstart.heads.base import encode, log_loss, softmax
from headstart.heads.svm import smoothed_targets

log = logging.getLogger(__name__)

CALIBRATIONS = ("none", "temperature")
T_BOUNDS = (0.05, 20.0)


def check_calibration(name: str | None) -> str | None:
    """``None`` for no calibration, else the method's name; an unknown one is a `HeadError`."""
    if name is None or name == "none":
        return None
    if name not in CALIBRATIONS:
        raise HeadError(f"Expected --calibrate among {', '.join(CALIBRATIONS)}. Received: {name!r}.")
    return name


def fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    """The temperature of least log loss of ``softmax(logits / T)`` on these rows, in ``T_BOUNDS``.

    The loss is taken against Platt's smoothed targets (`headstart.heads.svm.smoothed_targets`):
    on a validation split the head gets entirely right, plain log loss falls forever as ``T``
    shrinks and the head would come out overconfident. A temperature whose plain log loss is
    worse than the head's own is not kept (1.0 is returned).
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = smoothed_targets(y_idx, logits.shape[1])

    def smoothed(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-np.mean(np.sum(targets * log_p, axis=1)))

    def plain(t: float) -> float:
        return log_loss(softmax(logits / t), y_idx)

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(smoothed, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return t if plain(t) < plain(1.0) else 1.0


def crossfit_logits(make_head, train, validation, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold scores of every training row: for each fold, a new head (``make_head()``) fits
    the other folds (early stopping and any choice on ``validation``, as the real head does) and
    scores the fold it never saw. Returns ``(scores, class index of each row)``."""
    from headstart.heads.sources import subset

    classes = np.unique(train.labels)
    out = np.zeros((len(train.labels), len(classes)), dtype=np.float64)
    for k in np.unique(folds):
        held, rest = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        fold_head = make_head().fit_source(subset(train, rest), validation)
        if not np.array_equal(fold_head.classes_, classes):
            raise HeadError(
                f"Expected every class among the training pictures outside each calibration fold. Received: "
                f"fold {k} holds all of {len(classes) - len(fold_head.classes_)} class(es); use "
                "--calibration-rows split, or more pictures of the small classes."
            )
        out[held] = fold_head.logits_source(subset(train, held))
        log.info("calibration fold %d: %d rows scored by a head fitted on %d", k, len(held), len(rest))
    return out, encode(train.labels, classes, "training")


def calibrate_logits(head, logits: np.ndarray, y_idx: np.ndarray, method: str = "temperature") -> dict[str, Any]:
    """Fit ``head.temperature_`` on scores of rows the head (or a stand-in of it) never used."""
    if method != "temperature":
        raise HeadError(f"Expected --calibrate among {', '.join(CALIBRATIONS)}. Received: {method!r}.")
    t = fit_temperature(logits, y_idx)
    head.temperature_ = t
    log.info("%s head: temperature %.3f fitted on %d out-of-fold rows", head.name, t, len(y_idx))
    return {"method": method, "temperature": t}


def calibrate(head, rows, method: str = "temperature") -> dict[str, Any]:
    """Fit ``head.temperature_`` on a `RowSource` of rows the head has not used; returns what was fitted.

    Raises `HeadError` without rows (there is nothing to calibrate on).
    """
    if method != "temperature":
        raise HeadError(f"Expected --calibrate among {', '.join(CALIBRATIONS)}. Received: {method!r}.")
    if rows is None or not len(rows.labels):
        raise HeadError(
            "Expected pictures to calibrate on. Received: an empty calibration split; "
            "raise --calibration-fraction or leave out --calibrate."
        )
    head.temperature_ = None
    logits = head.logits_source(rows)
    y_idx = encode(rows.labels, head.classes_, "calibration")
    t = fit_temperature(logits, y_idx)
    head.temperature_ = t
    log.info("%s head: temperature %.3f fitted on %d calibration rows", head.name, t, len(y_idx))
    return {"method": method, "temperature": t}
