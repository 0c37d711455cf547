"""Label issues: out-of-sample class probabilities from K-fold logistic regression, then confident learning.

Each picture's probabilities come from a logistic regression that did not see it (stratified
K folds on the reduced, standardized features; see `C`). cleanlab's `find_label_issues`
(Northcutt, Jiang and Chuang 2021, "Confident Learning") flags the pictures whose given label
disagrees with what the others say about them. They are ranked by cleanlab's label-quality score
(`METHOD`, in [0, 1], low: likely wrong) on the probabilities softened by one temperature fitted
on them (`temperature`): on weak features the regressions are overconfident, and every top issue
showed p(given) < 0.01, a score of 1.00 each, which told a reviewer nothing. Each issue carries
the margin p(suggested) - p(given), suggested being the most probable other class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

FOLDS = 5
C = 0.1
"""Regularization of the K-fold logistic regressions (on standardized rows). Measured on the planted
pets sample: C = 0.1 puts 9 of 10 flipped labels in the top 20 issues; choosing C by out-of-fold
log loss picks 0.01, whose flatter probabilities let cleanlab flag only 13 pictures (7 flipped)."""


METHOD = "normalized_margin"
"""cleanlab's label-quality score: (p(given) - p(best other) + 1) / 2, the form cleanlab recommends for
labels swapped between classes (self-confidence, p(given), is for pictures of no class; the outliers
cover those). On the planted pets (10 flips, two classes, where both forms rank alike) 9 flips are
among the top 20 issues (`tests/test_audit_planted.py`)."""


@dataclass(frozen=True)
class LabelIssues:
    rows: np.ndarray  # row indices, most suspicious first
    scores: np.ndarray  # cleanlab label-quality score (0: surely wrong, 1: surely right), per entry of ``rows``
    suggested: np.ndarray  # the most probable other label out of sample, per entry of ``rows``
    proba: np.ndarray  # (N, C) out-of-fold probabilities (after the temperature), columns = all class indices
    C: float | None
    folds: int
    note: str | None = None
    margins: np.ndarray | None = None  # p(suggested) - p(given), per entry of ``rows``
    accuracy: float | None = None  # out-of-fold accuracy of the regression on all rows
    temperature: float | None = None
    given: np.ndarray | None = None  # p(given label) out of fold, per entry of ``rows``


def temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature T >= 1 that minimizes the log loss of ``proba ** (1/T)`` (renormalized) on labels ``y``.

    Fitted on out-of-fold probabilities: rows no regression saw, so the fit corrects overconfidence
    rather than rewarding it. T only softens (>= 1): it never sharpens probabilities into certainty.
    """
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(proba, 1e-12, 1.0))

    def loss(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    best = minimize_scalar(loss, bounds=(0.0, np.log(100.0)), method="bounded")
    return float(np.exp(best.x))


def soften(proba: np.ndarray, t: float) -> np.ndarray:
    z = np.log(np.clip(proba, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def out_of_fold_proba(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = FOLDS, seed: int = 0, C: float = C):
    """(N, n_classes) probabilities, each row from a model fitted without it, and the folds used."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    present, y_local = np.unique(y, return_inverse=True)
    folds = int(min(folds, np.bincount(y_local).min()))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = np.zeros((len(y), n_classes), dtype=np.float64)
    for train, test in splitter.split(x, y_local):
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegression(C=C, max_iter=300)
        model.fit(scaler.transform(x[train]), y_local[train])
        proba[np.ix_(test, present[model.classes_])] = model.predict_proba(scaler.transform(x[test]))
    return proba, folds


def find_label_issues(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = FOLDS, seed: int = 0) -> LabelIssues:
    """Label issues of the rows ``x`` with labels ``y`` (indices into ``n_classes`` class names)."""
    y = np.asarray(y, dtype=np.int64)
    present, y_local = np.unique(y, return_inverse=True)
    empty = np.zeros(0, dtype=np.int64)
    if len(present) < 2 or np.bincount(y_local).min() < 2:
        counts = np.bincount(y_local) if len(y) else np.zeros(0, int)
        note = (
            "label issues need at least two classes with two pictures each; received "
            f"{len(present)} classes, the smallest with {int(counts.min()) if len(counts) else 0}"
        )
        return LabelIssues(empty, np.zeros(0), empty, np.zeros((len(y), n_classes)), None, 0, note)
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    proba, folds = out_of_fold_proba(x, y, n_classes, folds, seed)
    local = proba[:, present]
    local = local / np.clip(local.sum(axis=1, keepdims=True), 1e-300, None)
    flagged = np.flatnonzero(cl_find(labels=y_local, pred_probs=local, n_jobs=1))
    t = temperature(local, y_local)
    local = soften(local, t)
    proba = np.zeros_like(proba)
    proba[:, present] = local
    accuracy = float((local.argmax(axis=1) == y_local).mean())
    quality = get_label_quality_scores(y_local, local, method=METHOD)
    ranked = flagged[np.lexsort((flagged, quality[flagged]))].astype(np.int64)
    given = local[ranked, y_local[ranked]]
    other = local[ranked].copy()
    other[np.arange(len(ranked)), y_local[ranked]] = -np.inf
    suggested = present[other.argmax(axis=1)] if len(ranked) else empty
    margins = other.max(axis=1) - given if len(ranked) else np.zeros(0)
    log.info("label issues: %d flagged; out-of-fold accuracy %.3f, temperature %.2f", len(ranked), accuracy, t)
    return LabelIssues(ranked, quality[ranked], suggested, proba, C, folds, None, margins, accuracy, t, given)
