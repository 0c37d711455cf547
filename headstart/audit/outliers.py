"""Outliers: pictures far from everything else in feature space, ranked.

The score of a picture is one minus the mean cosine similarity to its ``k`` nearest neighbours
(centred, reduced rows; `headstart.audit.space`): a picture unlike any other scores near 1,
one in a crowd of similar pictures near 0. Like cleanlab's and FiftyOne's k-nearest-neighbour
outlier scores, it needs no labels.
"""

from __future__ import annotations

import numpy as np

K = 5


def outlier_scores(nn_sim: np.ndarray, k: int = K) -> np.ndarray:
    """One score per row in [0, 2]: 1 - mean similarity of the ``k`` nearest neighbours."""
    if nn_sim.shape[1] == 0:
        return np.zeros(len(nn_sim), dtype=np.float64)
    return 1.0 - nn_sim[:, :k].astype(np.float64).mean(axis=1)


def rank_outliers(scores: np.ndarray, top: int) -> np.ndarray:
    """Row indices of the ``top`` highest scores, highest first (ties by row)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:top]
