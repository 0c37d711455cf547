"""Test-time augmentation: the rows of one picture (its views: the picture, its mirror) averaged.

A cache extracted with ``--views flip`` holds two rows per picture with the same path. Heads train
on every row; scores are per picture: the class probabilities of its rows are averaged, so a
picture counts once in every metric and `misclassified` lists it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def picture_groups(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(group of each row, first row of each group)``, groups numbered in order of first appearance."""
    if not len(paths):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, first, inverse = np.unique(np.asarray(paths, dtype=object), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()], first[order]


def per_picture(
    proba: np.ndarray, labels: np.ndarray, paths: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the probabilities of rows with the same path: ``(proba, labels, first row)`` per picture."""
    groups, first = picture_groups(paths)
    sums = np.zeros((len(first), proba.shape[1]), dtype=np.float64)
    np.add.at(sums, groups, proba)
    counts = np.bincount(groups, minlength=len(first))
    return sums / np.maximum(counts, 1)[:, None], np.asarray(labels)[first], first
