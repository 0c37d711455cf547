"""Outliers: pictures far from their class and from everything, ranked; and tight groups of them.

A picture's score is one minus the mean cosine similarity (raw reduced rows;
`headstart.audit.space`) to its ``k`` nearest neighbours, taken twice: among all rows and among
the rows of its own class, the higher of the two. ``k`` grows with the row count (`neighbour_count`:
a tenth of the class, at least 10 and at most 50), well above the size of a group of off-topic
pictures: three logos are each other's nearest neighbours, and with k = 5 they looked typical.

Chosen by measurement on the pets sample (300 photos, MobileNet 0.25) with off-topic pictures
planted, 2 groups (screenshots, logos) spread over both classes and 3 singletons; top 12 (groups
of 3) or top 26 (groups of 10) outliers, grouped / singletons found:

| score | groups of 3 | groups of 10 |
|---|---|---|
| kNN, k = 5 (the score before) | 3/6, 3/3 | 0/20, 3/3 |
| cleanlab `OutOfDistribution` (kNN, k = 10) | 6/6, 3/3 | 0/20, 3/3 |
| LOF, 10 / 20 neighbours | 6/6, 3/3 / 6/6, 3/3 | 0/20, 2/3 / 20/20, 3/3 |
| Mahalanobis per class, Ledoit-Wolf, 20 whitened PCs | 6/6, 0/3 | 6/20, 0/3 |
| robust Mahalanobis (MCD), 10 whitened PCs | 6/6, 3/3 | 20/20 (singletons ranked 15-23) |
| this score | 6/6, 3/3 | 20/20, 3/3 (singletons first) |

FiftyOne's uniqueness (a k = 3 neighbour distance) is not installed here; it is a small-k score
like the first row. `outlier_groups` lists the tight little groups among the highest scores as
one finding each (both planted groups, of 3 and of 10, came out as exactly their members).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K_SHARE = 0.1
"""k is this share of the rows compared (a class, or all rows) ..."""
K_MIN = 10
K_MAX = 50
"""... clipped to [K_MIN, K_MAX] (and below the row count)."""
GROUP_MAX = 20
"""Largest outlier group listed; bigger clusters are a kind of picture, not contamination."""
GROUP_TIGHTNESS = 0.5
"""Two candidates join a group when their cosine distance is at most this share of their outlier scores."""


def neighbour_count(rows: int) -> int:
    """k for ``rows`` rows: ``K_SHARE`` of them in [``K_MIN``, ``K_MAX``], at most ``rows - 1``."""
    return int(max(0, min(max(round(K_SHARE * rows), K_MIN), K_MAX, rows - 1)))


def _mean_top(sim: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Mean of the first ``ks[i]`` entries of each row ``i`` of ``sim`` (sorted, highest first)."""
    if sim.shape[1] == 0:
        return np.ones(len(sim), dtype=np.float64)
    csum = np.cumsum(np.where(np.isfinite(sim), sim, 0.0).astype(np.float64), axis=1)
    ks = np.clip(ks, 1, sim.shape[1])
    return csum[np.arange(len(sim)), ks - 1] / ks


def outlier_scores(top_sim: np.ndarray, class_sim: np.ndarray | None = None, labels: np.ndarray | None = None):
    """Per row: (score, score among all rows, score within its class), each 1 - mean similarity, in [0, 2].

    ``top_sim`` (N, >= k) are each row's highest similarities to all rows, ``class_sim`` to the
    rows of its class (``labels``), highest first. Without ``class_sim`` the score is the first.
    """
    n = len(top_sim)
    overall = 1.0 - _mean_top(top_sim, np.full(n, neighbour_count(n)))
    if class_sim is None or labels is None or n == 0:
        return overall, overall, None
    counts = np.bincount(labels)
    ks = np.array([neighbour_count(int(c)) for c in counts])[labels]
    within = np.where(ks > 0, 1.0 - _mean_top(class_sim, ks), overall)
    return np.maximum(overall, within), overall, within


def rank_outliers(scores: np.ndarray, top: int) -> np.ndarray:
    """Row indices of the ``top`` highest scores, highest first (ties by row)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:top]


@dataclass(frozen=True)
class OutlierGroup:
    rows: list[int]  # highest score first
    score: float  # the mean outlier score of the members
    similarity: float  # the lowest cosine similarity between two members


GROUP_CANDIDATES = 0.02
"""`outlier_groups` looks among this share of the highest scores (at least 50) ..."""
GROUP_SPREAD = 3.0
"""... that are also this many robust standard deviations above the median score."""


def group_candidates(scores: np.ndarray) -> np.ndarray:
    """Rows `outlier_groups` looks among, highest score first: the top 2 % (at least 50) that stand
    out from the bulk (median + `GROUP_SPREAD` x 1.4826 x the median absolute deviation)."""
    n = len(scores)
    if n < 3:
        return np.zeros(0, dtype=np.int64)
    rows = rank_outliers(scores, min(n, max(50, round(GROUP_CANDIDATES * n))))
    median = float(np.median(scores))
    cut = median + GROUP_SPREAD * 1.4826 * float(np.median(np.abs(scores - median)))
    return rows[scores[rows] > cut]


def outlier_groups(unit: np.ndarray, scores: np.ndarray) -> list[OutlierGroup]:
    """Groups of 2 to ``GROUP_MAX`` high-scoring rows that are closer to each other than to their class.

    Among the `group_candidates`, two rows are linked when the cosine distance between
    them (rows of ``unit``, L2-normalized) is at most ``GROUP_TIGHTNESS`` times the lower of their
    two scores: each is at least twice as close to the other as to its own nearest crowd. Groups
    join by complete linkage (every pair of members linked), so a chain of look-alikes is not a
    group. Highest mean score first.
    """
    rows = group_candidates(scores)
    if len(rows) < 2:
        return []
    u = unit[rows].astype(np.float64)
    dist = 1.0 - u @ u.T
    s = scores[rows]
    linked = dist <= GROUP_TIGHTNESS * np.minimum(s[:, None], s[None, :])
    np.fill_diagonal(linked, False)
    clusters = _complete_linkage(linked, dist, GROUP_MAX)
    out = []
    for members in clusters:
        if len(members) < 2:
            continue
        members = sorted(members)  # positions in ``rows``: highest score first
        sub = 1.0 - dist[np.ix_(members, members)]
        out.append(OutlierGroup([int(rows[i]) for i in members], float(s[members].mean()), float(sub.min())))
    out.sort(key=lambda g: (-g.score, g.rows[0]))
    return out


def _complete_linkage(linked: np.ndarray, dist: np.ndarray, largest: int) -> list[list[int]]:
    """Agglomerate the closest linked pairs first; two clusters merge only if all their pairs are linked."""
    cluster = list(range(len(linked)))
    members: dict[int, list[int]] = {i: [i] for i in range(len(linked))}
    i_idx, j_idx = np.nonzero(np.triu(linked, 1))
    for k in np.argsort(dist[i_idx, j_idx], kind="stable"):
        a, b = cluster[i_idx[k]], cluster[j_idx[k]]
        if a == b or len(members[a]) + len(members[b]) > largest:
            continue
        if not linked[np.ix_(members[a], members[b])].all():
            continue
        for r in members[b]:
            cluster[r] = a
        members[a] += members.pop(b)
    return list(members.values())
