"""Tests of headstart.heads.calibration: temperature scaling on a calibration split carved from training,
for any head, saved and exported."""

import json

import numpy as np
import pytest

from headstart.errors import HeadError
from headstart.heads import training
from headstart.heads.base import log_loss
from headstart.heads.calibration import calibrate, check_calibration, fit_temperature
from headstart.heads.registry import load_head, make_head, save_head
from headstart.heads.sources import ArraySource


def blobs(n=900, dim=16, classes=3, seed=0, spread=2.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    return (5 + centers[y] + rng.normal(0, spread, (n, dim))).astype(np.float32), y


def overconfident_logreg(X, y):
    """A logistic regression whose scores are multiplied by 6: right as often, far too sure."""
    head = make_head("logreg", C=1.0).fit(X, y)
    head.arrays_ = {k: v * 6 for k, v in head.arrays_.items()}
    return head


def test_temperature_lowers_validation_log_loss_of_a_miscalibrated_head():
    X, y = blobs()
    head = overconfident_logreg(X[:500], y[:500])
    val = ArraySource(X[500:700], y[500:700])
    before = head.predict_proba_source(val)
    fitted = calibrate(head, val)
    after = head.predict_proba_source(val)
    assert fitted["temperature"] > 3 and head.temperature_ == fitted["temperature"]
    assert log_loss(after, y[500:700]) < 0.8 * log_loss(before, y[500:700])
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))  # the predicted class never changes
    # and on rows it never saw
    uncalibrated = overconfident_logreg(X[:500], y[:500]).predict_proba(X[700:])
    assert log_loss(head.predict_proba(X[700:]), y[700:]) < log_loss(uncalibrated, y[700:])


def test_a_well_calibrated_head_keeps_a_temperature_near_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3000, 4))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    assert 0.85 < fit_temperature(logits, y) < 1.15


def test_temperature_is_saved_loaded_and_exported(tmp_path):
    X, y = blobs()
    head = overconfident_logreg(X[:500], y[:500])
    calibrate(head, ArraySource(X[500:700], y[500:700]))
    save_head(head, tmp_path)
    assert json.loads((tmp_path / "head.json").read_text())["fitted"]["temperature_"] == head.temperature_
    back = load_head(tmp_path)
    np.testing.assert_allclose(back.predict_proba(X[700:]), head.predict_proba(X[700:]), rtol=1e-5)
    model = back.to_keras()
    assert model.get_layer("temperature").scale == pytest.approx(1 / head.temperature_)
    np.testing.assert_allclose(np.asarray(model(X[700:])), head.predict_proba(X[700:]), atol=2e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, 1e9, "1.5"])
def test_registry_refuses_a_bad_temperature(tmp_path, bad):
    from headstart.errors import RunError

    X, y = blobs(n=200)
    save_head(make_head("logreg", C=1.0).fit(X, y), tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    meta["fitted"]["temperature_"] = bad
    (tmp_path / "head.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="temperature_|fitted values"):
        load_head(tmp_path)


def test_calibration_needs_rows_and_a_known_method():
    X, y = blobs(n=200)
    head = make_head("logreg", C=1.0).fit(X, y)
    with pytest.raises(HeadError, match="Expected pictures to calibrate on"):
        calibrate(head, ArraySource(X[:0], y[:0]))
    with pytest.raises(HeadError, match="Expected --calibrate among none, temperature. Received: 'platt'"):
        check_calibration("platt")
    assert check_calibration("none") is None


def test_train_with_calibration_reports_before_and_after(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from heads_fixtures import features, write_cache

    X, y = features(sep=0.25)
    cache = write_cache(tmp_path / "c.h5", X, y)
    result = training.train(cache, "knn", tmp_path / "run", calibrate="temperature")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] == result.fitted["temperature_"]
    assert cal["calib"]["log_loss_after"] <= cal["calib"]["log_loss_before"]
    for split in ("calib", "val", "test"):
        assert {"ece_before", "ece_after", "log_loss_before", "log_loss_after"} <= set(cal[split])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["calibrate"] == "temperature" and (tmp_path / "run" / "calibration.png").stat().st_size > 0
    assert run["calibration"]["fraction_of_train"] == 0.2 and run["calibration"]["rows"] == cal["rows"]
    assert sum(run["split"]["counts"]["calib"].values()) == cal["rows"] == result.counts["calib"]
    from headstart.heads.evaluation import evaluate

    assert evaluate(tmp_path / "run").metrics["log_loss"] == pytest.approx(metrics["test"]["log_loss"])


def _fixtures():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from heads_fixtures import features, write_cache

    return features, write_cache


def test_calibration_rows_are_carved_from_training_only_and_stably():
    from headstart.heads.split import CALIB, TRAIN, SplitSpec, assign, carve_calibration

    paths = [f"c{i % 3}/p{i}.jpg" for i in range(3000)]
    codes = assign(paths, SplitSpec())
    carved = carve_calibration(paths, codes, 0.2, seed=0)
    moved = carved != codes
    assert (codes[moved] == TRAIN).all() and (carved[moved] == CALIB).all()  # only training rows move
    assert 0.17 < moved.sum() / (codes == TRAIN).sum() < 0.23
    # the same rows whatever the order or the other pictures, and independent of the split's own hash
    half = carve_calibration(paths[::2], codes[::2], 0.2, seed=0)
    np.testing.assert_array_equal(half, carved[::2])
    assert not np.array_equal(carve_calibration(paths, codes, 0.2, seed=1), carved)
    with pytest.raises(Exception, match="calibration-fraction"):
        carve_calibration(paths, codes, 1.0, seed=0)


def test_the_temperature_is_fitted_on_rows_that_training_and_early_stopping_never_saw(tmp_path, monkeypatch):
    from headstart.heads import calibration as C
    from headstart.heads.keras_heads import KerasHead

    features, write_cache = _fixtures()
    X, y = features(sep=0.25)
    cache = write_cache(tmp_path / "c.h5", X, y)
    seen = {}
    fit_source = KerasHead.fit_source

    def spy_fit(self, train, validation=None):
        seen["train"], seen["val"] = train, validation
        return fit_source(self, train, validation)

    calibrate_rows = C.calibrate

    def spy_calibrate(head, rows, method="temperature"):
        seen["calib"] = rows
        return calibrate_rows(head, rows, method)

    monkeypatch.setattr(KerasHead, "fit_source", spy_fit)
    monkeypatch.setattr(C, "calibrate", spy_calibrate)
    params = {"epochs": 5, "learning_rate": 0.01}
    result = training.train(cache, "softmax", tmp_path / "run", params=params, calibrate="temperature", plots=False)
    rows = {name: {tuple(r) for r in np.asarray(seen[name].gather(np.arange(len(seen[name].labels))))} for name in seen}
    assert len(rows["calib"]) == result.counts["calib"] > 0
    assert not rows["calib"] & rows["train"] and not rows["calib"] & rows["val"]
    plain = training.train(cache, "softmax", tmp_path / "plain", params=params, plots=False)
    assert result.counts["train"] + result.counts["calib"] == plain.counts["train"]  # carved out of training


def test_an_overfit_softmax_gets_a_temperature_above_one_and_a_lower_test_log_loss(tmp_path):
    """No validation split, so no early stopping: 200 epochs on 64 noisy features overfit."""
    from headstart.heads.split import SplitSpec

    features, write_cache = _fixtures()
    X, y = features(sep=0.25)
    cache = write_cache(tmp_path / "c.h5", X, y)
    result = training.train(
        cache,
        "softmax",
        tmp_path / "run",
        split=SplitSpec((0.7, 0.0, 0.3)),
        params={"epochs": 200, "learning_rate": 0.01},
        calibrate="temperature",
        plots=False,
    )
    cal = result.metrics["calibration"]
    assert cal["temperature"] > 2
    assert cal["test"]["log_loss_after"] < 0.6 * cal["test"]["log_loss_before"]
    assert cal["test"]["ece_after"] < cal["test"]["ece_before"]


def test_a_well_calibrated_logreg_keeps_a_temperature_near_one(tmp_path):
    features, write_cache = _fixtures()
    X, y = features(sep=0.25)
    cache = write_cache(tmp_path / "c.h5", X, y)
    result = training.train(cache, "logreg", tmp_path / "run", calibrate="temperature", plots=False)
    cal = result.metrics["calibration"]
    assert 0.8 < cal["temperature"] < 1.25
    assert cal["test"]["log_loss_after"] == pytest.approx(cal["test"]["log_loss_before"], rel=0.05)


def test_crossfit_scores_each_training_row_with_a_head_that_never_saw_it():
    from headstart.heads.calibration import crossfit_logits

    X, y = blobs(n=300)
    fitted, scored = [], []

    def make():
        head = make_head("logreg", C=1.0)
        fit, logits = head.fit_source, head.logits_source

        def spy_fit(train, validation=None):
            fitted.append({tuple(r) for r in train.gather(np.arange(len(train)))})
            return fit(train, validation)

        def spy_logits(source):
            scored.append({tuple(r) for r in source.gather(np.arange(len(source)))})
            return logits(source)

        head.fit_source, head.logits_source = spy_fit, spy_logits
        return head

    folds = np.random.default_rng(0).integers(0, 5, 300)
    logits, y_idx = crossfit_logits(make, ArraySource(X, y), ArraySource(X[:50], y[:50]), folds)
    assert logits.shape == (300, 3) and np.array_equal(y_idx, y) and len(fitted) == len(scored) == 5
    for rows_fitted, rows_scored in zip(fitted, scored):
        assert not rows_fitted & rows_scored
    assert set().union(*scored) == {tuple(r) for r in X}  # every training row scored once
    assert 0.5 < fit_temperature(logits, y_idx) < 2


def test_crossfit_calibrates_a_head_trained_on_every_training_row(tmp_path):
    """knn's vote shares are far from calibrated: cross-fitting finds it, with no row set aside."""
    features, write_cache = _fixtures()
    X, y = features(sep=0.25)
    cache = write_cache(tmp_path / "c.h5", X, y)
    result = training.train(
        cache, "knn", tmp_path / "run", plots=False, calibrate="temperature", calibration_rows="crossfit"
    )
    cal = result.metrics["calibration"]
    assert cal["folds"] == 5 and cal["rows"] == result.counts["train"] and "calib" not in result.counts
    assert abs(np.log(cal["temperature"])) > 0.2 and cal["test"]["log_loss_after"] < cal["test"]["log_loss_before"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["calibration"]["folds"] == 5 and run["calibration"]["rows"] == result.counts["train"]
    plain = training.train(cache, "knn", tmp_path / "plain", plots=False)
    assert result.counts["train"] == plain.counts["train"]  # nothing set aside
    from headstart.heads.evaluation import evaluate

    assert evaluate(tmp_path / "run").metrics["log_loss"] == pytest.approx(cal["test"]["log_loss_after"])
    with pytest.raises(HeadError, match="Expected --calibration-rows among split, crossfit"):
        training.train(cache, "knn", tmp_path / "x", calibrate="temperature", calibration_rows="folds")
