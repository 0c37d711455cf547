"""Duplicates: the same file bytes (exact) and near-identical pictures (feature similarity), grouped.

Exact duplicates share a content hash. Near duplicates are pairs whose centred feature rows have
a cosine similarity of at least the threshold; they are searched in the reduced space
(`headstart.audit.space.neighbours`) and, when the features were reduced, confirmed on the full
feature rows. The threshold comes from the cache itself (`derive_threshold`): every picture's
similarity to its nearest other picture forms a bulk (distinct photos of the same kind), and a
copy stands far above it. Pairs are joined into groups by complete linkage: two groups merge only
when every pair between them is a near-duplicate pair, so look-alikes cannot chain a group
together. A group whose pictures fall in more than one of the train / validation / test splits
leaks: a test picture the head has, in effect, already seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headstart.heads.split import SPLITS

THRESHOLD = None
"""Default near-duplicate threshold: None derives it from the cache (`derive_threshold`)."""
SPREAD = 4.0
"""The derived threshold is the median nearest-neighbour similarity plus this many robust standard
deviations of its lower half. Measured on the pets sample with 10 copies each re-encoded (JPEG 50),
resized to 50 % and cropped by 5 % a side, MobileNet 0.25 on squashed pictures, on cropped ones
(--resize crop) and on the mean of picture and mirror (--views flip): thresholds 0.78, 0.77 and 0.83,
above every pair of distinct photos (at most 0.69-0.70), below every re-encoded (0.94+) and cropped
(0.84+) copy; 9 of 10 resized copies (one small photo halved falls to 0.68-0.82). With 3 deviations
(0.69-0.74) a pair of distinct photos was grouped."""
FLOOR, CEILING = 0.5, 0.98
"""The derived threshold stays within [FLOOR, CEILING]."""
SEARCH_FLOOR = 0.45
"""Candidate pairs are collected down to this similarity in the reduced space, before the threshold is known."""
SEARCH_MARGIN = 0.05
"""Pairs this much below the threshold in the reduced space are checked on the full rows."""


def derive_threshold(nearest: np.ndarray) -> float:
    """The near-duplicate threshold of a cache whose rows' highest centred similarities are ``nearest``.

    Median plus `SPREAD` robust standard deviations, the deviation taken from the lower half of the
    distribution ((median - first quartile) / 0.6745), clipped to [`FLOOR`, `CEILING`]; then again
    on the rows below it, until none is left out: copies (all in the upper tail) would otherwise
    lift the median of a folder that holds many.
    """
    nearest = np.asarray(nearest, dtype=np.float64)
    bulk = nearest[np.isfinite(nearest)]
    if len(bulk) < 4:
        return CEILING
    for _ in range(10):  # leave out what stands above, then look again: copies cannot lift the bulk
        q25, q50 = np.quantile(bulk, [0.25, 0.5])
        threshold = float(np.clip(q50 + SPREAD * (q50 - q25) / 0.6745, FLOOR, CEILING))
        below = bulk[bulk < threshold]
        if len(below) == len(bulk) or len(below) < 4:
            break
        bulk = below
    return threshold


@dataclass(frozen=True)
class DuplicateGroup:
    rows: list[int]
    similarity: float  # the lowest similarity between two members (1.0 for identical bytes)
    exact: bool  # every picture has the same bytes
    splits: list[str]  # the split of each row, in the order of ``rows``

    @property
    def leakage(self) -> bool:
        return len(set(self.splits)) > 1


def _complete_linkage(n_pairs: dict[tuple[int, int], float]) -> list[tuple[list[int], float]]:
    """Groups from pairs ``{(i, j): similarity}``, most similar pairs first; two groups merge only when
    every pair between them is in ``n_pairs``. Returns (rows, lowest pairwise similarity) per group."""
    cluster: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    weakest: dict[int, float] = {}
    for i, j in sorted(n_pairs, key=lambda key: (-n_pairs[key], key)):
        a, b = cluster.setdefault(i, i), cluster.setdefault(j, j)
        members.setdefault(a, [a])
        members.setdefault(b, [b])
        if a == b:
            continue
        cross = [n_pairs.get((min(p, q), max(p, q))) for p in members[a] for q in members[b]]
        if any(c is None for c in cross):
            continue
        for r in members[b]:
            cluster[r] = a
        members[a] += members.pop(b)
        weakest[a] = min([weakest.get(a, 1.0), weakest.pop(b, 1.0), *cross])
    return [(sorted(rows), weakest.get(root, 1.0)) for root, rows in members.items() if len(rows) > 1]


def find_duplicates(
    hashes: Sequence[str | None],
    pairs: np.ndarray,
    sims: np.ndarray,
    split_codes: np.ndarray,
) -> list[DuplicateGroup]:
    """Groups of pictures with the same bytes or a near-duplicate pair between them, most similar first."""
    n_pairs: dict[tuple[int, int], float] = {}
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h:
            by_hash.setdefault(h, []).append(i)
    for rows in by_hash.values():
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                n_pairs[(rows[a], rows[b])] = 1.0
    for (i, j), s in zip(pairs, sims):
        key = (int(min(i, j)), int(max(i, j)))
        n_pairs[key] = max(n_pairs.get(key, -1.0), float(min(s, 1.0)))
    out = []
    for rows, weakest in _complete_linkage(n_pairs):
        first = hashes[rows[0]]
        exact = first is not None and all(hashes[r] == first for r in rows)
        out.append(
            DuplicateGroup(
                rows=rows,
                similarity=1.0 if exact else weakest,
                exact=exact,
                splits=[SPLITS[int(split_codes[r])] for r in rows],
            )
        )
    out.sort(key=lambda g: (-g.similarity, g.rows[0]))
    return out
