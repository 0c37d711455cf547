"""Tests of headstart.heads.svm: a valid estimator, probabilities calibrated on validation, save and load."""

import warnings

import numpy as np
import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from headstart.errors import RunError
from headstart.heads.base import log_loss
from headstart.heads.registry import load_head, make_head, save_head
from headstart.heads.svm import SVMHead, fit_scaling, smoothed_targets


def blobs(n=600, dim=32, classes=3, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    return (10 + 2 * centers[y] + rng.normal(0, spread, (n, dim))).astype(np.float32), y


@pytest.mark.parametrize(
    ("estimator", "check"),
    [
        pytest.param(e, c, id=getattr(c, "func", c).__name__)
        for e, c in estimator_checks_generator(SVMHead(), legacy=True)
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


@pytest.mark.parametrize("classes", [2, 3])
def test_svm_probabilities_are_calibrated_on_validation(classes):
    X, y = blobs(classes=classes)
    head = SVMHead().fit(X[:400], y[:400], validation_data=(X[400:500], y[400:500]))
    assert head.C_ in head.Cs
    p = head.predict_proba(X[500:])
    assert p.shape == (100, classes) and head.score(X[500:], y[500:]) > 0.85
    # calibrated: far better than a softmax over raw decision values
    assert log_loss(p, y[500:]) < 0.5
    assert head.arrays_["coef"].shape == (classes, 32)


def test_fit_scaling_is_platt_for_two_classes_and_finite_when_separable():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    d1 = np.where(y == 1, 1.0, -1.0) * 2 + rng.normal(0, 1, 200)
    slope, offset = fit_scaling(np.stack([np.zeros(200), d1], 1), y)
    assert 0.5 < slope < 5
    sep = np.where(y == 1, 5.0, -5.0)  # perfectly separated: Platt's targets keep the slope finite
    slope, _ = fit_scaling(np.stack([np.zeros(200), sep], 1), y)
    assert slope < 3
    t = smoothed_targets(np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(t, [[0.75, 0.25], [0.75, 0.25], [1 / 3, 2 / 3]])


def test_save_load_round_trip_and_array_checks(tmp_path):
    X, y = blobs()
    head = make_head("svm", C=0.01).fit(X[:400], y[:400])  # no validation data: a holdout calibrates
    save_head(head, tmp_path)
    back = load_head(tmp_path)
    assert back.C_ == 0.01
    np.testing.assert_allclose(back.predict_proba(X[400:]), head.predict_proba(X[400:]), rtol=1e-6)
    np.savez(tmp_path / "head.npz", coef=np.full((3, 32), np.nan, np.float32), intercept=np.zeros(3, np.float32))
    with pytest.raises(RunError, match="finite values of coef"):
        load_head(tmp_path)


def test_to_keras_gives_the_same_probabilities():
    X, y = blobs()
    head = SVMHead().fit(X[:400], y[:400], validation_data=(X[400:500], y[400:500]))
    model = head.to_keras()
    np.testing.assert_allclose(np.asarray(model(X[500:])), head.predict_proba(X[500:]), atol=2e-5)
