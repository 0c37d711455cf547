"""Train / validation / test split: each picture's split follows from its relative path and a seed.

A picture's split is a pure function of ``(seed, relative path)``: the pair is hashed with
SHA-256 to a number ``u`` uniform in [0, 1), and ``u`` is cut at the cumulative fractions
(0.7 → train, 0.85 → validation, the rest → test). So

- the same command gives the same split on any machine, in any row order;
- a picture keeps its split when pictures are added to the cache later (nothing is re-ranked);
- each class is split 70 / 15 / 15 in expectation, since ``u`` does not depend on the class.

The cost of stability is that the counts are only close to the fractions, not exact (a class of
40 pictures may get 5 or 8 validation pictures); `split_counts` reports what was drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.cache.paths import normalize_path
from headstart.errors import SplitError

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class SplitSpec:
    """How a cache is split: fractions of (train, validation, test) and the seed."""

    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    seed: int = 0

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.fractions)
        if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise SplitError(
                "Expected three non-negative fractions of train, validation and test that sum to 1. "
                f"Received: {','.join(str(f) for f in self.fractions)}."
            )
        if fr[0] <= 0:
            raise SplitError(f"Expected a training fraction above 0. Received: {fr[0]}.")
        object.__setattr__(self, "fractions", fr)
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> SplitSpec:
        """Read ``"0.7,0.15,0.15"`` (or percentages ``"70,15,15"``) as a split."""
        try:
            parts = [float(p) for p in text.replace(" ", "").split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3:
            raise SplitError(
                f"Expected --split as three comma-separated fractions like 0.7,0.15,0.15. Received: {text!r}."
            )
        if sum(parts) > 1.5:  # given as percentages
            parts = [p / 100 for p in parts]
        return cls(tuple(parts), seed)

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": list(self.fractions), "seed": self.seed, "method": "sha256(seed, relative path)"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitSpec:
        return cls(tuple(data["fractions"]), int(data["seed"]))


def unit_hash(paths: Sequence[str], seed: int, salt: str = "") -> np.ndarray:
    """A number in [0, 1) per path, uniform over paths, fixed by ``(seed, path)`` alone (and
    ``salt``: another salt gives numbers independent of these)."""
    out = np.empty(len(paths), dtype=np.float64)
    prefix = f"{salt}{int(seed)}\0".encode()
    for i, p in enumerate(paths):
        digest = hashlib.sha256(prefix + normalize_path(p).encode("utf-8")).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def assign(paths: Sequence[str], spec: SplitSpec = SplitSpec()) -> np.ndarray:
    """Split code per path (`TRAIN`, `VAL`, `TEST`) as ``int8``."""
    u = unit_hash(paths, spec.seed)
    cuts = np.cumsum(spec.fractions)[:2]
    return np.searchsorted(cuts, u, side="right").astype(np.int8)


CALIB = 3
"""Code of the training rows set aside to calibrate on (`carve_calibration`)."""
CALIBRATION_SALT = "calibration\0"
DEFAULT_CALIBRATION_FRACTION = 0.2


def carve_calibration(paths: Sequence[str], codes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Set aside about ``fraction`` of the training rows (code `TRAIN`) as `CALIB`: rows that
    neither training, early stopping nor any choice on validation sees, to fit a temperature on.

    The choice is a pure function of ``(seed, relative path)``, hashed with another salt than
    the split so that it is independent of it; validation and test rows never move."""
    if not (np.isfinite(fraction) and 0 < fraction < 1):
        raise SplitError(f"Expected --calibration-fraction between 0 and 1 (excluded). Received: {fraction}.")
    u = unit_hash(paths, seed, CALIBRATION_SALT)
    out = np.array(codes, dtype=np.int8, copy=True)
    out[(out == TRAIN) & (u < fraction)] = CALIB
    return out


CALIBRATION_FOLD_SALT = "calibration-fold\0"
CALIBRATION_FOLDS = 5
CALIBRATION_ROWS = ("split", "crossfit")
"""Where a temperature is fitted: ``split``, a share of the training rows set aside
(`carve_calibration`); ``crossfit``, out-of-fold scores of the training rows (`calibration_folds`)."""


def calibration_folds(paths: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold (0 to ``folds - 1``) of each path, a pure function of ``(seed, relative path)``: the
    views of one picture share a fold."""
    return np.minimum((unit_hash(paths, seed, CALIBRATION_FOLD_SALT) * folds).astype(np.int64), folds - 1)


def split_indices(paths: Sequence[str], spec: SplitSpec = SplitSpec()) -> dict[str, np.ndarray]:
    """Row indices of each split, ascending: ``{"train": ..., "val": ..., "test": ...}``."""
    codes = assign(paths, spec)
    return {name: np.flatnonzero(codes == k) for k, name in enumerate(SPLITS)}


def split_counts(
    labels: np.ndarray, indices: Mapping[str, np.ndarray], class_names: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Pictures per class in each split: ``{"train": {"cat": 70, ...}, ...}``."""
    out = {}
    for name, idx in indices.items():
        bins = np.bincount(np.asarray(labels)[idx], minlength=len(class_names))
        out[name] = {c: int(n) for c, n in zip(class_names, bins)}
    return out


def check_trainable(counts: Mapping[str, Mapping[str, int]], total: Mapping[str, int]) -> None:
    """Every class that has pictures must have training pictures, or no head can learn it."""
    missing = [c for c, n in total.items() if n > 0 and counts["train"].get(c, 0) == 0]
    if missing:
        raise SplitError(
            "Expected training pictures of every class. Received: none of "
            f"{', '.join(missing)} in the training split ({', '.join(f'{c}: {total[c]} in all' for c in missing)}); "
            "add pictures of those classes, or raise the training fraction with --split."
        )
