"""Shared data of the heads tests: blob features, a cache writer, a cache and a logreg run on it."""

import conftest
import numpy as np
import pytest
from conftest import TINY_FINGERPRINT

from headstart.cache import CacheHeader, CacheWriter
from headstart.heads import training

SHARED = conftest.SHARED / "data"
CLASSES = ("cat", "dog", "fox")
FP = TINY_FINGERPRINT
KERAS = {"epochs": 12, "batch_size": 32, "learning_rate": 0.01, "patience": 3}


def features(n=600, dim=64, classes=3, seed=0, sep=0.4):
    """Blobs a linear head separates at about 95 %: some mistakes to list, none to worry about."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0, 1, (classes, dim)) * sep
    y = rng.integers(0, classes, n)
    return (5 + centers[y] + rng.normal(0, 1, (n, dim))).astype(np.float32), y


def write_cache(path, X, y, *, classes=CLASSES, fp=FP, root="/data/pets", prefix="p"):
    paths = [f"{classes[k]}/{prefix}{i}.jpg" for i, k in enumerate(y)]
    header = CacheHeader(
        dim=X.shape[1],
        dtype="float16",
        fingerprint=fp,
        class_names=tuple(classes),
        root=str(root),
    )
    with CacheWriter(path, header) as w:
        for s in range(0, len(y), 100):  # several commits, as extract makes them
            w.append(X[s : s + 100], y[s : s + 100], paths[s : s + 100])
            w.commit()
        w.close(complete=True)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    X, y = features()
    return write_cache(tmp_path_factory.mktemp("cache") / "feats.h5", X, y)


@pytest.fixture(scope="module")
def logreg_run(cache, tmp_path_factory):
    return training.train(cache, "logreg", tmp_path_factory.mktemp("runs") / "logreg")
