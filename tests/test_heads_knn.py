"""Tests of headstart.heads.knn: a valid estimator, k chosen on validation, float16 rows, save and load."""

import json
import warnings

import numpy as np
import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from headstart.errors import HeadError, RunError
from headstart.heads.knn import KNNHead, _top_k
from headstart.heads.registry import load_head, make_head, save_head


def blobs(n=450, dim=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    return (10 + 2 * centers[y] + rng.normal(0, 2.0, (n, dim))).astype(np.float32), y


@pytest.mark.parametrize(
    ("estimator", "check"),
    [
        pytest.param(e, c, id=getattr(c, "func", c).__name__)
        for e, c in estimator_checks_generator(KNNHead(), legacy=True)
    ],
)
def test_sklearn_estimator_checks(estimator, check):
    from sklearn.exceptions import SkipTestWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        try:
            check(estimator)
        except Exception as err:
            if type(err).__name__ == "SkipTest":
                pytest.skip(str(err))
            raise


def test_knn_chooses_k_on_validation_and_predicts_well():
    X, y = blobs()
    head = KNNHead().fit(X[:300], y[:300], validation_data=(X[300:375], y[300:375]))
    assert head.k_ in head.ks and [r["k"] for r in head.history_] == sorted(head.ks)
    assert head.score(X[375:], y[375:]) > 0.9
    p = head.predict_proba(X[375:])
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-9)
    assert p.min() > 0  # smoothed: no class gets probability 0
    assert head.arrays_["rows"].dtype == np.float16 and head.arrays_["rows"].shape == (300, 32)
    np.testing.assert_allclose(np.linalg.norm(head.arrays_["rows"].astype(np.float32), axis=1), 1, atol=2e-3)


def test_top_k_over_blocks_matches_a_full_sort(monkeypatch):
    import headstart.heads.knn as K

    rng = np.random.default_rng(1)
    rows, queries = rng.normal(size=(1000, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    monkeypatch.setattr(K, "STORED_ROWS", 128)
    monkeypatch.setattr(K, "QUERY_ROWS", 16)
    sims, idx = _top_k(queries, rows, 7)
    full = queries @ rows.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(sims, np.take_along_axis(full, idx, 1), rtol=1e-5)


def test_save_load_round_trip_keeps_float16_rows(tmp_path):
    X, y = blobs()
    head = make_head("knn", k=5).fit(X[:300], y[:300])
    save_head(head, tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["fitted"]["k_"] == 5 and meta["fitted"]["n_rows_"] == 300
    back = load_head(tmp_path)
    assert back.arrays_["rows"].dtype == np.float16
    np.testing.assert_allclose(back.predict_proba(X[300:]), head.predict_proba(X[300:]))


def _resave(tmp_path, **arrays):
    with np.load(tmp_path / "head.npz") as z:
        saved = {k: z[k] for k in z.files}
    saved.update(arrays)
    np.savez(tmp_path / "head.npz", **saved)


def test_registry_refuses_bad_knn_arrays(tmp_path):
    X, y = blobs()
    head = make_head("knn", k=3).fit(X[:300], y[:300])
    save_head(head, tmp_path)
    labels = head.arrays_["labels"].copy()
    _resave(tmp_path, labels=np.where(labels == 0, 7, labels).astype(np.float32))
    with pytest.raises(RunError, match="labels as class indices 0..2"):
        load_head(tmp_path)
    _resave(tmp_path, labels=labels + 0.5)
    with pytest.raises(RunError, match="labels as class indices"):
        load_head(tmp_path)
    _resave(tmp_path, labels=labels, rows=head.arrays_["rows"][:299])  # fewer rows than head.json says
    with pytest.raises(RunError, match=r"rows .* of shape \(300, 32\)"):
        load_head(tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    for bad in (None, -1, "300", 2.5):
        meta["fitted"]["n_rows_"] = bad
        (tmp_path / "head.json").write_text(json.dumps(meta))
        with pytest.raises(RunError):
            load_head(tmp_path)


def test_to_keras_refuses_knn_with_a_clear_message():
    X, y = blobs(n=100)
    head = make_head("knn", k=3).fit(X, y)
    with pytest.raises(HeadError, match="export does not support it"):
        head.to_keras()
