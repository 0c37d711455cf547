"""Tests of headstart.heads.training: train and compare end to end, streaming, bad input."""

import csv
import json

import numpy as np
import pytest
from heads_fixtures import CLASSES, FP, KERAS, cache, features, logreg_run, write_cache  # noqa: F401 - fixtures
from PIL import Image

from headstart.cache import open_cache
from headstart.errors import CacheError, RunError
from headstart.heads import HeadError, LogRegHead, evaluation, training
from headstart.heads.sources import CacheSource
from headstart.heads.split import SplitError, SplitSpec, assign

# -- train -------------------------------------------------------------------------------------


def test_train_writes_every_run_file_and_each_parses(logreg_run, cache):
    d = logreg_run.run_dir
    expected = {
        "head.json",
        "standardization.npz",
        "head.npz",
        "run.json",
        "metrics.json",
        "history.csv",
        "curves.png",
        "confusion.png",
        "calibration.png",
    }
    assert expected == {p.name for p in d.iterdir()}

    run = json.loads((d / "run.json").read_text())
    assert run["head"] == "logreg" and run["class_names"] == list(CLASSES)
    assert run["cache"]["path"] == str(cache.resolve())
    assert run["cache"]["fingerprint"] == FP
    assert run["split"]["fractions"] == [0.7, 0.15, 0.15] and run["split"]["seed"] == 0
    assert sum(sum(c.values()) for c in run["split"]["counts"].values()) == 600
    assert run["params"]["Cs"] == list(LogRegHead().Cs)
    assert {"numpy", "scikit-learn", "h5py"} <= set(run["versions"])
    assert run["fit_seconds"] > 0

    metrics = json.loads((d / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert m["n"] == logreg_run.counts[split]
        assert 0.85 < m["accuracy"] <= 1 and m["log_loss"] > 0 and 0 <= m["ece"] < 0.2
        assert set(m["per_class"]) == set(CLASSES)
        assert {"precision", "recall", "f1", "support"} == set(m["per_class"]["cat"])
        assert np.array(m["confusion_matrix"]).shape == (3, 3) and np.sum(m["confusion_matrix"]) == m["n"]
        assert m["roc_auc_ovr"] > 0.9  # three classes: one-vs-rest AUC (binary: roc_auc)
        assert len(m["calibration_bins"]) == 15

    with open(d / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["C"]) for r in rows] == sorted(LogRegHead().Cs)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])

    for name in ("curves.png", "confusion.png", "calibration.png"):
        with Image.open(d / name) as im:
            assert im.format == "PNG" and im.size[0] > 200


def test_test_split_is_never_given_to_fit(cache, tmp_path, monkeypatch):
    seen = {}
    original = LogRegHead.fit_source

    def spy(self, train, validation=None):
        seen["train"], seen["val"] = len(train.labels), len(validation.labels)
        return original(self, train, validation)

    monkeypatch.setattr(LogRegHead, "fit_source", spy)
    result = training.train(cache, "logreg", tmp_path / "run", plots=False)
    assert seen == {"train": result.counts["train"], "val": result.counts["val"]}
    with open_cache(cache) as c:
        codes = assign(c.paths, SplitSpec())
    assert result.counts == {name: int((codes == k).sum()) for k, name in enumerate(("train", "val", "test"))}


def test_compare_trains_heads_on_the_same_split(cache, tmp_path):
    result = training.compare(cache, tmp_path / "cmp", heads=["softmax", "mlp"], params={**KERAS, "hidden_units": 32})
    assert [r["head"] for r in result.rows] == ["softmax", "mlp"]
    for r in result.rows:
        assert r["test_accuracy"] > 0.85 and r["val_accuracy"] > 0.85 and r["fit_seconds"] > 0
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["rows"] == result.rows
    with Image.open(tmp_path / "cmp" / "comparison.png") as im:
        assert im.format == "PNG"
    splits = [json.loads((tmp_path / "cmp" / h / "run.json").read_text())["split"] for h in ("softmax", "mlp")]
    assert splits[0] == splits[1]
    assert (tmp_path / "cmp" / "mlp" / "head.npz").exists()
    with open(tmp_path / "cmp" / "softmax" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])


def test_compare_again_after_a_killed_compare(cache, tmp_path):
    """A kill -9 leaves our hidden temporary folder behind; the same command must still go on."""
    out = tmp_path / "cmp"
    training.compare(cache, out, heads=["logreg"])
    (tmp_path / ".cmp.partial-4242").mkdir()  # a comparison that was being written when killed
    (tmp_path / ".cmp.partial-4242" / "comparison.png").write_bytes(b"half")
    result = training.compare(cache, out, heads=["logreg"])
    assert [r["head"] for r in result.rows] == ["logreg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


def test_compare_rejects_an_option_no_head_takes(cache, tmp_path):
    with pytest.raises(HeadError, match="No head among logreg takes the option epochs"):
        training.compare(cache, tmp_path / "cmp", heads=["logreg"], params={"epochs": 3})


def test_streaming_from_the_file_trains_as_well(cache, tmp_path):
    result = training.train(cache, "softmax", tmp_path / "s", params=KERAS, stream=True, plots=False)
    assert result.streamed and result.test_accuracy > 0.85
    assert json.loads((tmp_path / "s" / "run.json").read_text())["streamed"] is True


def test_logreg_refuses_a_streamed_cache(cache, tmp_path):
    with pytest.raises(RunError, match="needs the training rows in memory"):
        training.train(cache, "logreg", tmp_path / "s", stream=True)


def test_cache_source_reads_rows_in_any_order(cache):
    with open_cache(cache) as c:
        rows = np.array([3, 5, 200, 201, 599])
        src = CacheSource(c, rows)
        full = c.read()
        np.testing.assert_array_equal(src.gather(np.array([4, 0, 2])), full[[599, 3, 200]])
        np.testing.assert_array_equal(np.concatenate([src.read_block(b) for b in range(len(src.blocks))]), full[rows])


# -- bad input ---------------------------------------------------------------------------------


def test_training_again_replaces_the_earlier_run(cache, tmp_path):
    out = tmp_path / "run"
    first = training.train(cache, "logreg", out, plots=False)
    stamp = json.loads((out / "run.json").read_text())["created"]
    training.train(cache, "logreg", out, plots=False, split=SplitSpec(seed=1))
    assert json.loads((out / "run.json").read_text())["split"]["seed"] == 1
    assert first.run_dir == out and stamp
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no partial or old folders left


def test_a_run_whose_files_changed_is_not_replaced(cache, tmp_path):
    out = tmp_path / "run"
    training.train(cache, "logreg", out, plots=False)
    (out / "metrics.json").write_text("{}")  # edited by hand: no longer what headstart wrote
    with pytest.raises(RunError, match="holds files headstart did not write"):
        training.train(cache, "logreg", out, plots=False)
    assert (out / "metrics.json").read_text() == "{}"


def test_out_folder_with_other_files_is_refused(cache, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds files headstart did not write"):
        training.train(cache, "logreg", tmp_path)


def test_bad_head_fails_before_the_cache_is_read(tmp_path):
    with pytest.raises(HeadError, match="Received: 'rbf'"):
        training.train(tmp_path / "missing.h5", "rbf", tmp_path / "run")
    with pytest.raises(CacheError, match="no such file"):
        training.train(tmp_path / "missing.h5", "logreg", tmp_path / "run")


def test_one_class_or_an_empty_cache_is_refused(tmp_path):
    X, y = features(100)
    write_cache(tmp_path / "one.h5", X, np.zeros(100, dtype=int))
    with pytest.raises(SplitError, match="at least two classes"):
        training.train(tmp_path / "one.h5", "logreg", tmp_path / "run")
    write_cache(tmp_path / "empty.h5", X[:0], y[:0])
    with pytest.raises(RunError, match="0 rows"):
        training.train(tmp_path / "empty.h5", "logreg", tmp_path / "run")


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunError, match="no run.json"):
        evaluation.evaluate(tmp_path)
    with pytest.raises(RunError, match="no such folder"):
        evaluation.misclassified(tmp_path / "nope")


@pytest.mark.parametrize("head, stream", [("logreg", False), ("mlp", True)])
def test_non_finite_features_are_named_before_any_fit(head, stream, tmp_path):
    X, y = features(n=300)
    X[123, 5] = np.nan
    X[200, 0] = np.inf
    bad = write_cache(tmp_path / "bad.h5", X, y)
    with pytest.raises(CacheError, match=r"NaN or infinity in the rows of .*p123.jpg \(row 123\)"):
        training.train(bad, head, tmp_path / "run", stream=stream, params={} if head == "logreg" else KERAS)
    assert not (tmp_path / "run").exists()
