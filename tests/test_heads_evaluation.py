"""Tests of headstart.heads.evaluation: evaluate and misclassified on the run's and other caches."""

import json
from pathlib import Path

import numpy as np
import pytest
from heads_fixtures import CLASSES, FP, cache, features, logreg_run, write_cache  # noqa: F401 - fixtures
from PIL import Image

from headstart.cache import CacheHeader, CacheWriter, open_cache
from headstart.errors import CacheError, CacheMismatchError, HeadstartError, RunError
from headstart.heads import evaluation, training
from headstart.heads.split import SplitSpec, assign

# -- evaluate ----------------------------------------------------------------------------------


def test_evaluate_recomputes_the_test_metrics(logreg_run):
    result = evaluation.evaluate(logreg_run.run_dir)
    assert result.scope == "test split"
    saved = json.loads((logreg_run.run_dir / "metrics.json").read_text())["test"]
    assert result.metrics["n"] == saved["n"]
    assert result.metrics["accuracy"] == saved["accuracy"]
    assert result.metrics["log_loss"] == pytest.approx(saved["log_loss"], rel=1e-9)


def test_evaluate_on_a_whole_other_cache(logreg_run, tmp_path):
    X, y = features(90, seed=7)
    other = write_cache(tmp_path / "new.h5", X, y, root="/data/new-pictures")
    result = evaluation.evaluate(logreg_run.run_dir, other)
    assert result.scope == "whole cache" and result.metrics["n"] == 90 and result.excluded == 0
    assert result.metrics["accuracy"] > 0.8


def test_evaluate_leaves_out_the_runs_own_training_pictures(logreg_run, cache, tmp_path):
    X, y = features()  # the same pictures, same root, extracted again into another file
    again = write_cache(tmp_path / "again.h5", X, y)
    result = evaluation.evaluate(logreg_run.run_dir, again)
    assert result.metrics["n"] == logreg_run.counts["test"]
    assert result.excluded == logreg_run.counts["train"] + logreg_run.counts["val"]


def test_evaluate_refuses_a_cache_with_other_settings(logreg_run, tmp_path):
    X, y = features(50)
    other = write_cache(tmp_path / "other.h5", X, y, fp={**FP, "input_size": 64})
    with pytest.raises(CacheMismatchError) as err:
        evaluation.evaluate(logreg_run.run_dir, other)
    assert "input_size: 32 (run) vs 64 (cache)" in str(err.value)
    assert isinstance(err.value, HeadstartError)


def test_evaluate_maps_classes_by_name_and_refuses_unknown_ones(logreg_run, tmp_path):
    X, y = features(60)
    only_dogs = write_cache(
        tmp_path / "dogs.h5", X[y == 1], np.zeros(int((y == 1).sum()), int), classes=("dog",), root="/data/dogs"
    )
    result = evaluation.evaluate(logreg_run.run_dir, only_dogs)
    assert result.metrics["per_class"]["dog"]["support"] == int((y == 1).sum())
    assert result.metrics["per_class"]["cat"]["support"] == 0
    birds = write_cache(tmp_path / "birds.h5", X, y, classes=("cat", "dog", "bird"), root="/data/birds")
    with pytest.raises(RunError, match="Received: .*birds.h5 with bird"):
        evaluation.evaluate(logreg_run.run_dir, birds)


def test_evaluate_says_how_to_go_on_when_the_runs_cache_is_gone(cache, tmp_path):
    X, y = features(200)
    moved = write_cache(tmp_path / "moved.h5", X, y)
    run = training.train(moved, "logreg", tmp_path / "run", plots=False)
    moved.unlink()
    with pytest.raises(RunError, match="headstart evaluate .* CACHE"):
        evaluation.evaluate(run.run_dir)


def test_evaluate_after_pictures_are_added_keeps_the_old_test_split(tmp_path):
    X, y = features(300)
    path = write_cache(tmp_path / "grow.h5", X, y)
    run = training.train(path, "logreg", tmp_path / "run", plots=False)
    with open_cache(path) as c:
        old_test = {p for p, k in zip(c.paths, assign(c.paths, SplitSpec())) if k == 2}
    X2, y2 = features(200, seed=9)
    header = CacheHeader(
        dim=64,
        dtype="float16",
        fingerprint=FP,
        class_names=CLASSES,
        root="/data/pets",
    )
    new_paths = [f"{CLASSES[k]}/new{i}.jpg" for i, k in enumerate(y2)]
    with CacheWriter(path, header) as w:  # extract run again over a folder with more pictures
        w.append(X2, y2, new_paths)
        w.close(complete=True)
    new_test = {p for p, k in zip(new_paths, assign(new_paths, SplitSpec())) if k == 2}
    result = evaluation.evaluate(run.run_dir)
    assert result.metrics["n"] == len(old_test) + len(new_test) == run.counts["test"] + len(new_test)


# -- misclassified -----------------------------------------------------------------------------


def test_misclassified_lists_wrong_test_pictures_by_loss(logreg_run, tmp_path):
    result = evaluation.misclassified(logreg_run.run_dir, n=3, montage=tmp_path / "m.png")
    cm = np.array(json.loads((logreg_run.run_dir / "metrics.json").read_text())["test"]["confusion_matrix"])
    assert result.n_wrong == cm.sum() - np.trace(cm) > 0
    assert result.n_test == logreg_run.counts["test"]
    assert 0 < len(result.mistakes) <= 3
    losses = [m.loss for m in result.mistakes]
    assert losses == sorted(losses, reverse=True)
    for m in result.mistakes:
        assert m.true != m.predicted and m.path.startswith(m.true + "/")
        assert m.file == Path("/data/pets") / m.path
        assert m.probability >= 1 / 3
    with Image.open(result.montage) as im:  # the pictures do not exist: drawn as blank tiles
        assert im.format == "PNG"


def test_misclassified_refuses_n_below_one(logreg_run):
    with pytest.raises(RunError, match="-n of 1 or more"):
        evaluation.misclassified(logreg_run.run_dir, n=0)


def test_evaluate_names_non_finite_features_of_another_cache(logreg_run, tmp_path):
    X, y = features(n=300, seed=3)
    X[7] = np.inf
    bad = write_cache(tmp_path / "bad.h5", X, y, root="/elsewhere")
    with pytest.raises(CacheError, match=r"p7.jpg \(row 7\)"):
        evaluation.evaluate(logreg_run.run_dir, bad)
