"""HDF5 files that would make headstart read other files: weights files and caches, refused in one line."""

import h5py
import numpy as np
import pytest
from heads_fixtures import features, write_cache

from headstart.cache import open_cache
from headstart.cache.h5safety import problem
from headstart.errors import BackboneError, CacheError
from headstart.settings.config import resolve_weights


def _secret(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-" * 10_000)
    return secret


def test_a_clean_file_has_no_problem_and_each_door_is_named(tmp_path):
    secret = _secret(tmp_path)
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["g/kernel"] = np.zeros((2, 2), dtype=np.float32)
        assert problem(f) is None
        f["g/a"] = h5py.SoftLink("/g/kernel")
        assert problem(f) == "/g/a is a soft link to '/g/kernel'"
        del f["g/a"]
        f["g/b"] = h5py.ExternalLink(str(secret), "/x")
        assert problem(f) == f"/g/b is an external link to '{secret}'"
        del f["g/b"]
        f.create_dataset("g/c", shape=(8,), dtype="u1", external=[(str(secret), 0, 8)])
        assert problem(f) == f"/g/c keeps its bytes in another file ('{secret}')"
        del f["g/c"]
        layout = h5py.VirtualLayout(shape=(2, 2), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(path), "g/kernel", shape=(2, 2))
        f.create_virtual_dataset("g/d", layout)
        assert problem(f) == "/g/d is a virtual dataset (it reads other files)"
        assert problem(f, allow_virtual=frozenset({"g/d"})) is None


@pytest.mark.parametrize("door", ["external storage", "external link"])
def test_a_weights_file_that_reads_another_file_is_refused(tmp_path, door):
    secret = _secret(tmp_path)
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f["layer/kernel"] = np.zeros((3, 3), dtype=np.float32)
    assert resolve_weights(str(path), 0)[0].startswith("sha256:")
    with h5py.File(path, "r+") as f:
        if door == "external storage":
            f.create_dataset("layer/bias", shape=(3,), dtype=np.float32, external=[(str(secret), 0, 12)])
        else:
            f["layer/bias"] = h5py.ExternalLink(str(secret), "/bias")
    with pytest.raises(BackboneError, match=r"keeps its data in itself. Received: .*/layer/bias"):
        resolve_weights(str(path), 0)


def test_a_cache_whose_rows_lie_in_another_file_is_refused_on_open(tmp_path):
    """Issue 21, finding 9: /sha256 stored in secret.txt was accepted by every command."""
    secret = _secret(tmp_path)
    X, y = features(n=40)
    cache = write_cache(tmp_path / "c.h5", X, y)
    with h5py.File(cache, "r+") as f:
        if "sha256" in f:
            del f["sha256"]
        f.create_dataset("sha256", shape=(40,), dtype="S64", external=[(str(secret), 0, 64 * 40)])
    with pytest.raises(CacheError, match=r"/sha256 keeps its bytes in another file \('.*secret.txt'\)"):
        open_cache(cache)
