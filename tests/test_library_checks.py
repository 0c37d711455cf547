"""The library, not only the CLI, refuses a cache whose settings this version does not know.

Called from Python, `train`, `compare`, `sweep`, `audit` and `make_map` check a cache's fingerprint
against the registries (backbones, layers, preprocessing...) before any work, as the CLI did.
"""

from __future__ import annotations

import pytest
from heads_fixtures import FP, features, write_cache

from headstart.audit import audit
from headstart.audit.projection import make_map
from headstart.errors import CacheError
from headstart.heads import sweep as S
from headstart.heads import training

UNKNOWN = [
    pytest.param({"backbone": "no_such_backbone"}, "no_such_backbone", id="backbone"),
    pytest.param({"preprocessing": "os.system"}, "os.system", id="preprocessing"),
]

CALLS = {
    "train": lambda cache, out: training.train(cache, "logreg", out),
    "compare": lambda cache, out: training.compare(cache, out, heads=["logreg"]),
    "sweep": lambda cache, out: S.sweep(cache, "logreg", out, grid={"C": [1.0]}),
    "audit": lambda cache, out: audit(cache, out),
    "map": lambda cache, out: make_map(cache, out / "map.png"),
}


@pytest.fixture(scope="module")
def blobs():
    return features(n=120, dim=8)


@pytest.mark.parametrize("change, named", UNKNOWN)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_library_call_refuses_settings_it_does_not_know(call, change, named, blobs, tmp_path):
    cache = write_cache(tmp_path / "c.h5", *blobs, fp={**FP, **change})
    out = tmp_path / "out"
    with pytest.raises(CacheError, match="does not know") as err:
        CALLS[call](cache, out)
    assert named in str(err.value) and str(cache) in str(err.value)
    assert not out.exists()  # refused before any work


def test_the_same_calls_run_on_known_settings(blobs, tmp_path):
    """The check refuses only what it should: the tiny backbone's settings pass."""
    cache = write_cache(tmp_path / "c.h5", *blobs)
    assert training.train(cache, "logreg", tmp_path / "run").metrics["test"]["accuracy"] > 0.5
