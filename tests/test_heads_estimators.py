"""Tests of the heads (logreg, keras_heads, registry): valid estimators, accuracy, save and load, options."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from headstart.errors import RunError
from headstart.heads import (
    ArraySource,
    HeadError,
    LogRegHead,
    MLPHead,
    SoftmaxHead,
    Standardizer,
    head_params,
    load_head,
    make_head,
    save_head,
)

# Options that make the Keras heads converge in a few epochs on a few hundred rows.
QUICK = {
    "softmax": {"epochs": 15, "batch_size": 32, "learning_rate": 0.02, "patience": 3},
    "mlp": {"epochs": 15, "batch_size": 32, "learning_rate": 0.005, "hidden_units": 32, "dropout": 0.2, "patience": 3},
    "logreg": {},
}


def blobs(n=450, dim=64, classes=3, spread=2.5, seed=0):
    """Gaussian blobs in ``dim`` dimensions, offset by a large common mean (as CNN features are)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    X = 10 + 3 * centers[y] + rng.normal(0, spread, (n, dim))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = blobs()
    return X[:300], y[:300], X[300:375], y[300:375], X[375:], y[375:]


@pytest.fixture(scope="module")
def fitted(data):
    """Each head fitted once (with a validation split), shared by the tests below."""
    Xtr, ytr, Xv, yv, _, _ = data
    return {name: make_head(name, **QUICK[name]).fit(Xtr, ytr, validation_data=(Xv, yv)) for name in QUICK}


# -- scikit-learn's estimator checks -----------------------------------------------------------

# Checks that need no fit, or that a test below covers with a shared fit: these run by default
# for the Keras heads; their full suite (about 2 minutes each) is marked slow.
_NO_FIT = {
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_estimators_unfitted",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_complex_data",
    "check_estimators_empty_data_messages",
    "check_estimator_sparse_tag",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_classifiers_one_label",
    "check_classifiers_regression_target",
    "check_supervised_y_no_nan",
    "check_parameters_default_constructible",
    "check_fit2d_1sample",
    "check_get_params_invariance",
    "check_set_params",
    "check_fit1d",
    "check_requires_y_none",
}


def _check_params():
    heads = [
        LogRegHead(),
        SoftmaxHead(epochs=30, batch_size=32, learning_rate=0.05, patience=3),
        MLPHead(epochs=30, batch_size=32, learning_rate=0.01, hidden_units=32, dropout=0.1, patience=3),
    ]
    params = []
    for head in heads:
        for est, check in estimator_checks_generator(head, legacy=True):
            name = getattr(check, "func", check).__name__
            slow = not isinstance(head, LogRegHead) and name not in _NO_FIT
            marks = [pytest.mark.slow] if slow else []
            params.append(pytest.param(est, check, id=f"{type(head).__name__}-{name}", marks=marks))
    return params


@pytest.mark.parametrize(("estimator", "check"), _check_params())
def test_sklearn_estimator_checks(estimator, check):
    from sklearn.exceptions import SkipTestWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        try:
            check(estimator)
        except Exception as err:  # pandas or the array API are not installed here
            if type(err).__name__ == "SkipTest":
                pytest.skip(str(err))
            raise


# -- behaviour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["softmax", "logreg", "mlp"])
def test_head_reaches_seeded_accuracy_on_separable_features(name, fitted, data):
    *_, Xte, yte = data
    head = fitted[name]
    assert head.score(Xte, yte) > 0.95
    proba = head.predict_proba(Xte)
    assert proba.shape == (len(Xte), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(head.classes_, [0, 1, 2])
    assert head.n_features_in_ == 64


@pytest.mark.parametrize("name", ["softmax", "logreg", "mlp"])
def test_save_load_gives_the_same_predictions(name, fitted, data, tmp_path):
    *_, Xte, _ = data
    head = fitted[name]
    files = save_head(head, tmp_path / name)
    assert all(f.exists() for f in files)
    assert {f.name for f in files} == {"head.json", "head.npz", "standardization.npz"}
    back = load_head(tmp_path / name)
    assert type(back) is type(head)
    assert back.get_params() == head.get_params()
    np.testing.assert_array_equal(back.classes_, head.classes_)
    np.testing.assert_array_equal(back.predict_proba(Xte), head.predict_proba(Xte))
    again = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(again.predict_proba(Xte), head.predict_proba(Xte))


def test_logreg_chooses_C_on_validation_and_keeps_the_path(fitted):
    head = fitted["logreg"]
    assert head.C_ in head.Cs
    assert [row["C"] for row in head.history_] == sorted(head.Cs)
    best = min(head.history_, key=lambda r: r["val_loss"])
    assert best["C"] == head.C_
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(best)


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_keras_heads_record_history_and_best_epoch(name, fitted):
    head = fitted[name]
    assert 1 <= head.best_epoch_ <= head.n_iter_ <= QUICK[name]["epochs"]
    assert len(head.history_) == head.n_iter_
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(head.history_[0])
    losses = [row["val_loss"] for row in head.history_]
    assert losses[head.best_epoch_ - 1] == min(losses)


def test_standardization_uses_the_training_rows_only():
    X, y = blobs(200)
    head = LogRegHead(C=1.0).fit(X, y, validation_data=(X[:50] + 100, y[:50]))
    np.testing.assert_allclose(head.scaler_.mean, X.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(head.scaler_.scale, X.std(axis=0), rtol=1e-4)


def test_standardizer_over_blocks_matches_numpy():
    rng = np.random.default_rng(1)
    X = (rng.normal(50, 4, (1000, 8))).astype(np.float16)
    X[:, 3] = 7  # a constant feature is left unscaled
    s = Standardizer.fit_blocks(iter(np.array_split(X, 7)), 8)
    ref = X.astype(np.float64)
    np.testing.assert_allclose(s.mean, ref.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(s.scale[[0, 1, 2, 4]], ref.std(axis=0)[[0, 1, 2, 4]], rtol=1e-5)
    assert s.scale[3] == 1
    assert s.transform(X).dtype == np.float32


def test_float16_input_and_a_streamed_source_fit_alike():
    X, y = blobs(300)
    X16 = X.astype(np.float16)
    a = LogRegHead(C=1.0).fit(X16, y)
    b = LogRegHead(C=1.0).fit_source(ArraySource(X16, y, block_rows=37))
    np.testing.assert_allclose(a.predict_proba(X16), b.predict_proba(X16), atol=1e-6)


@pytest.mark.parametrize("name", ["logreg", "svm", "mlp", pytest.param("softmax", marks=pytest.mark.slow)])
def test_balanced_class_weight_lifts_the_minority_class(name):
    """One class in 8, barely apart: unweighted, about half its rows are called the majority; balanced, most are not.

    Measured (recall of the minority class, none / balanced): logreg 0.48 / 0.88, svm 0.53 / 0.83, mlp
    0.45 / 0.95. A head that drops ``class_weight`` scores the same twice (logreg 0.40, mlp 0.45).
    """
    rng = np.random.default_rng(0)
    y = (np.arange(320) % 8 == 0).astype(int)
    X = (rng.normal(0, 1, (320, 8)) + 0.7 * y[:, None]).astype(np.float32)
    quick = {  # no held-out rows: the weighted validation loss would move early stopping on its own
        "softmax": {"epochs": 8, "batch_size": 32, "learning_rate": 0.05},
        "mlp": {"epochs": 8, "batch_size": 32, "learning_rate": 0.01, "hidden_units": 16, "dropout": 0.0},
    }.get(name, {})
    if name != "svm":
        quick["validation_fraction"] = 0.0
    recall = {}
    for cw in (None, "balanced"):
        head = make_head(name, class_weight=cw, **quick).fit(X, y)
        recall[cw] = np.mean(head.predict(X[y == 1]) == 1)
    assert recall["balanced"] >= recall[None] + 0.2, recall


def test_string_classes_round_trip(tmp_path):
    X, y = blobs(200, classes=2)
    labels = np.array(["cat", "dog"])[y]
    head = LogRegHead().fit(X, labels)
    save_head(head, tmp_path)
    back = load_head(tmp_path)
    assert set(back.predict(X)) <= {"cat", "dog"}
    np.testing.assert_array_equal(back.predict(X), head.predict(X))


def test_make_head_rejects_unknown_heads_and_options():
    with pytest.raises(
        HeadError, match="Expected a head among softmax, logreg, mlp, knn, svm, zeroshot. Received: 'rbf'"
    ):
        make_head("rbf")
    with pytest.raises(HeadError, match="takes no option epochs"):
        make_head("logreg", epochs=3)
    with pytest.raises(HeadError, match="dropout in \\[0, 1\\). Received: 1.5"):
        make_head("mlp", dropout=1.5)
    with pytest.raises(HeadError, match="learning_rate to be a number > 0"):
        make_head("softmax", learning_rate=0)
    assert "hidden_units" in head_params("mlp") and "hidden_units" not in head_params("softmax")


def test_one_class_is_refused_with_a_message():
    X, _ = blobs(50)
    with pytest.raises(ValueError, match="one class"):
        LogRegHead().fit(X, np.zeros(50, dtype=int))


def test_load_head_without_files_says_so(tmp_path):
    with pytest.raises(RunError, match="head.json. Received: no such file"):
        load_head(tmp_path)
