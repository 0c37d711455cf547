"""Duplicates: the same file bytes (exact) and near-identical pictures (feature similarity), grouped.

Exact duplicates share a content hash. Near duplicates are pairs whose centred feature rows have
a cosine similarity of at least the threshold; they are searched in the reduced space
(`headstart.audit.space.neighbours`) and, when the features were reduced, confirmed on the full
feature rows. Pairs are joined into groups (a copy of a copy is in the same
group). A group whose pictures fall in more than one of the train / validation / test splits
leaks: a test picture the head has, in effect, already seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headstart.heads.split import SPLITS

THRESHOLD = 0.75
"""Default centred cosine similarity of a near-duplicate pair (chosen on the pets sample; see README)."""
SEARCH_MARGIN = 0.05
"""Pairs this much below the threshold in the reduced space are checked on the full rows."""


@dataclass(frozen=True)
class DuplicateGroup:
    rows: list[int]
    similarity: float  # the weakest pair that joined the group (1.0 for identical bytes)
    exact: bool  # every picture has the same bytes
    splits: list[str]  # the split of each row, in the order of ``rows``

    @property
    def leakage(self) -> bool:
        return len(set(self.splits)) > 1


class _Groups:
    """Union-find over row indices, remembering the weakest similarity that joined each group."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.weakest: dict[int, float] = {}

    def find(self, i: int) -> int:
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int, sim: float) -> None:
        a, b = self.find(i), self.find(j)
        weakest = min(sim, self.weakest.get(a, 1.0), self.weakest.get(b, 1.0))
        if a != b:
            self.parent[b] = a
        self.weakest[a] = weakest

    def groups(self) -> list[tuple[list[int], float]]:
        members: dict[int, list[int]] = {}
        for i in list(self.parent):
            members.setdefault(self.find(i), []).append(i)
        return [(sorted(rows), self.weakest.get(root, 1.0)) for root, rows in members.items() if len(rows) > 1]


def find_duplicates(
    hashes: Sequence[str | None],
    pairs: np.ndarray,
    sims: np.ndarray,
    split_codes: np.ndarray,
) -> list[DuplicateGroup]:
    """Groups of pictures with the same bytes or a near-duplicate pair between them, most similar first."""
    groups = _Groups()
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h:
            by_hash.setdefault(h, []).append(i)
    for rows in by_hash.values():
        for j in rows[1:]:
            groups.join(rows[0], j, 1.0)
    for (i, j), s in zip(pairs, sims):
        groups.join(int(i), int(j), float(min(s, 1.0)))
    out = []
    for rows, weakest in groups.groups():
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
