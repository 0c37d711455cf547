"""The k-nearest-neighbours head: cosine similarity on standardized features, ``k`` chosen on validation.

No training: fitting standardizes the training rows, scales each to unit length and keeps them.
A row's class probabilities are the smoothed vote of its ``k`` most similar training rows,
``(votes + smoothing) / (k + n_classes * smoothing)``, so no class gets probability 0 (and the
log loss stays finite). Its scores (``_logits_rows``) are the logarithms of those probabilities,
so temperature calibration applies to it like to any head.

Saved arrays: ``rows`` (n, D) in **float16** (unit vectors: float16's 3 significant digits move a
cosine similarity by about 1e-3, and 25,000 x 4,096 rows take 205 MB instead of 410 MB) and
``labels`` (n,) as the class index of each row. The vote has no Keras layer, so ``to_keras``
refuses with `HeadError` (export does not support knn).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from headstart.errors import HeadError
from headstart.heads.base import (
    DTYPES,
    Head,
    check_fraction,
    check_positive,
    check_two_classes,
    encode,
    fit_scaler,
    holdout,
    log_loss,
)
from headstart.heads.sources import ArraySource, RowSource, iter_blocks

log = logging.getLogger(__name__)

QUERY_ROWS = 512  # query rows per similarity block
STORED_ROWS = 4096  # stored rows converted to float32 at a time


class KNNHead(Head):
    """Cosine k-nearest neighbours; with ``k=None`` the ``k`` of best validation accuracy among ``ks``."""

    name = "knn"

    def __init__(
        self,
        *,
        k: int | None = None,
        ks: Sequence[int] = (1, 3, 5, 9, 15, 25),
        smoothing: float = 1.0,
        validation_fraction: float = 0.15,
        standardize: bool = True,
        random_state=0,
    ):
        self.k = k
        self.ks = ks
        self.smoothing = smoothing
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.k is not None:
            check_positive("k", self.k, integer=True)
        if isinstance(self.ks, (str, bytes)) or not hasattr(self.ks, "__len__") or not len(self.ks):
            raise ValueError(f"Expected at least one value in ks. Received: {self.ks!r}.")
        for k in self.ks:
            check_positive("each of ks", k, integer=True)
        check_positive("smoothing", self.smoothing)
        check_fraction("validation_fraction", self.validation_fraction)

    def array_shapes(self, n_features: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        n = getattr(self, "n_rows_", None)
        if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise HeadError(f"Expected n_rows_ (the number of stored rows) as a positive integer. Received: {n!r}.")
        return {"rows": (n, n_features), "labels": (n,)}

    def check_arrays(self, arrays) -> str | None:
        labels = arrays["labels"]
        if not np.all((labels >= 0) & (labels < len(self.classes_)) & (labels == np.round(labels))):
            return f"labels as class indices 0..{len(self.classes_) - 1}"
        if not np.isin(np.arange(len(self.classes_)), labels).all():
            return "a stored row of every class"
        if int(self.k_ if hasattr(self, "k_") else 0) < 1:
            return "a fitted k_ of 1 or more"
        return None

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, X, y, validation_data=None):
        """Keep the rows of ``X``; choose ``k`` on ``validation_data=(X_val, y_val)`` (else a holdout)."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=DTYPES)
        check_classification_targets(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, reset=False, dtype=DTYPES)
            return self._fit(ArraySource(X, y), ArraySource(Xv, column_or_1d(yv)))
        return self._fit(ArraySource(X, y), None)

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        self._check_params()
        self.n_features_in_ = int(train.n_features)
        check_classification_targets(train.labels)
        return self._fit(train, validation)

    def _fit(self, train: RowSource, validation: RowSource | None):
        self.classes_ = np.unique(train.labels)
        check_two_classes(self.classes_)
        y_idx = encode(train.labels, self.classes_, "training")
        self.scaler_ = fit_scaler(self.standardize, train)
        rows = np.empty((len(y_idx), train.n_features), dtype=np.float16)
        for (start, stop), block in zip(train.blocks, iter_blocks(train)):
            rows[start:stop] = self._unit(block)
        self.n_rows_ = int(len(y_idx))
        self.arrays_ = {"rows": rows, "labels": y_idx.astype(np.float32)}
        ks = [int(self.k)] if self.k is not None else sorted({int(k) for k in self.ks})
        ks = [k for k in ks if k <= self.n_rows_] or [self.n_rows_]
        self.history_ = []
        if validation is None or not len(validation.labels):
            split = None if self.k is not None else holdout(y_idx, self.validation_fraction, self.random_state)
            self.k_ = ks[0] if self.k is not None else min(5, self.n_rows_)
            if split is not None:
                self._choose_k(ks, rows[split[0]], y_idx[split[0]], rows[split[1]].astype(np.float32), y_idx[split[1]])
        else:
            val_idx = encode(validation.labels, self.classes_, "validation")
            queries = np.concatenate([self._unit(b) for b in iter_blocks(validation)])
            self._choose_k(ks, rows, y_idx, queries, val_idx)
        self.n_iter_ = 0
        log.info("knn head: k=%d over %d stored rows", self.k_, self.n_rows_)
        return self

    def _choose_k(self, ks, rows, labels, queries, q_labels) -> None:
        """Score every candidate ``k`` on held-out queries; keep the most accurate (then lowest loss)."""
        sims, idx = _top_k(queries, rows, max(ks))
        best = None
        for k in ks:
            p = self._vote(labels[idx[:, :k]].astype(np.int64))
            row = {"k": k, "val_loss": log_loss(p, q_labels), "val_accuracy": float(np.mean(p.argmax(1) == q_labels))}
            self.history_.append(row)
            if best is None or (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"]):
                best = row
        self.k_ = best["k"]

    # -- predicting ------------------------------------------------------------------------------

    def _unit(self, block: np.ndarray) -> np.ndarray:
        """Standardized rows scaled to unit length (float32)."""
        x = self.scaler_.transform(block)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.where(norm > 0, norm, 1.0)
        return x

    def _vote(self, neighbour_labels: np.ndarray) -> np.ndarray:
        n_classes = len(self.classes_)
        k = neighbour_labels.shape[1]
        votes = np.zeros((len(neighbour_labels), n_classes), dtype=np.float64)
        np.add.at(votes, (np.repeat(np.arange(len(neighbour_labels)), k), neighbour_labels.ravel()), 1.0)
        return (votes + self.smoothing) / (k + n_classes * self.smoothing)

    def _logits_rows(self, X: np.ndarray) -> np.ndarray:
        labels = self.arrays_["labels"].astype(np.int64)
        k = min(int(self.k_), len(labels))
        _, idx = _top_k(self._unit(X), self.arrays_["rows"], k)
        return np.log(self._vote(labels[idx]))

    def to_keras(self):
        """Refused: see `_keras_logits` (raised before Keras is imported)."""
        return self._keras_logits(None, None)

    def _keras_logits(self, keras, x):
        raise HeadError(
            "Expected a head that Keras layers can rebuild (softmax, logreg, mlp, svm). Received: knn, whose "
            "top-k vote has no Keras layer that loads in safe mode, so export does not support it. "
            "Export another head, or predict with the run folder (headstart predict RUN PICTURES)."
        )


def _top_k(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities and positions of the ``k`` stored rows most similar to each query, best first.

    Works on blocks (``QUERY_ROWS`` queries x ``STORED_ROWS`` stored rows, float32), so memory stays
    a few tens of MB whatever the number of stored rows; ties go to the lower position.
    """
    k = min(k, len(rows))
    n = len(queries)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.zeros((n, k), dtype=np.int64)
    for s in range(0, len(rows), STORED_ROWS):
        stored = np.asarray(rows[s : s + STORED_ROWS], dtype=np.float32)
        for q in range(0, n, QUERY_ROWS):
            sims = queries[q : q + QUERY_ROWS] @ stored.T
            cand_s = np.concatenate([best_s[q : q + QUERY_ROWS], sims], axis=1)
            cand_i = np.concatenate(
                [best_i[q : q + QUERY_ROWS], np.broadcast_to(np.arange(s, s + len(stored)), sims.shape)], axis=1
            )
            keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k] if cand_s.shape[1] > k else np.argsort(-cand_s, 1)
            best_s[q : q + QUERY_ROWS] = np.take_along_axis(cand_s, keep, 1)
            best_i[q : q + QUERY_ROWS] = np.take_along_axis(cand_i, keep, 1)
    order = np.lexsort((best_i, -best_s), axis=1) if n else np.zeros((0, k), dtype=np.int64)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
