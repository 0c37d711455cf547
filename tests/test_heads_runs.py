"""Tests of headstart.heads.runs: train, compare, evaluate, predict and misclassified end to end."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.cache import CacheHeader, CacheWriter, open_cache
from headstart.errors import CacheError, CacheMismatchError, HeadstartError, RunError
from headstart import predict as prediction
from headstart.heads import evaluation, training
from headstart.heads.sources import CacheSource
from headstart.heads import HeadError, LogRegHead
from headstart.heads.split import SplitError, SplitSpec, assign

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("cat", "dog", "fox")
FP = {"backbone": "tiny", "layer": "embed", "input_size": 32, "weights": "none", "seed": 0}
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
        dim=X.shape[1], dtype="float16", fingerprint=fp, class_names=tuple(classes), root=str(root),
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


# -- train -------------------------------------------------------------------------------------


def test_train_writes_every_run_file_and_each_parses(logreg_run, cache):
    d = logreg_run.run_dir
    expected = {"head.json", "standardization.npz", "head.npz", "run.json", "metrics.json", "history.csv",
                "curves.png", "confusion.png", "calibration.png"}
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
    with pytest.raises(HeadError, match="Received: 'svm'"):
        training.train(tmp_path / "missing.h5", "svm", tmp_path / "run")
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
    only_dogs = write_cache(tmp_path / "dogs.h5", X[y == 1], np.zeros(int((y == 1).sum()), int), classes=("dog",),
                            root="/data/dogs")
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
        dim=64, dtype="float16", fingerprint=FP, class_names=CLASSES, root="/data/pets",
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


# -- predict (needs the extractor and ../shared) -----------------------------------------------


def _manifest():
    rows = (SHARED / "bad-images" / "MANIFEST.tsv").read_text().splitlines()[1:]
    return dict(line.split("\t")[:2] for line in rows if line.strip())


@pytest.fixture(scope="module")
def picture_run(tmp_path_factory):
    """A logreg run on tiny-backbone features of 24 real pet photos."""
    pytest.importorskip("headstart.extractor.runner")
    if not (SHARED / "pets-sample").is_dir():
        pytest.skip("../shared/data/pets-sample is not here")
    from headstart.extractor.runner import embed_files

    try:
        from headstart.extractor.backbones import make_config

        config = make_config("tiny", weights="none", input_size=32)
    except ImportError:
        from headstart.extractor.config import ExtractionConfig

        config = ExtractionConfig(backbone="tiny", layer="embed", weights="none", seed=0, input_size=32)
    root = SHARED / "pets-sample"
    files = sorted(root.glob("Cat/*.jpg"))[:12] + sorted(root.glob("Dog/*.jpg"))[:12]
    res = embed_files(files, config)
    ok = [Path(p) for p in res.ok]
    fp = config.fingerprint()
    tmp = tmp_path_factory.mktemp("pictures")
    header = CacheHeader(
        dim=res.features.shape[1], dtype="float16", fingerprint=fp, class_names=("Cat", "Dog"), root=str(root),
    )
    with CacheWriter(tmp / "pets.h5", header) as w:
        w.append(res.features, [int(p.parent.name == "Dog") for p in ok], [p.relative_to(root).as_posix() for p in ok])
        w.close(complete=True)
    run = training.train(tmp / "pets.h5", "logreg", tmp / "run", split=SplitSpec((0.6, 0.2, 0.2)), plots=False)
    return run.run_dir, files


def test_predict_good_and_bad_pictures(picture_run):
    run_dir, files = picture_run
    bad = SHARED / "bad-images"
    result = prediction.predict(run_dir, [files[0], files[-1], bad, "no/such.jpg"], top_k=2)
    by_name = {p.path.name: p for p in result.predictions}
    assert result.predictions[0].path == files[0] and result.predictions[0].ok
    for p in result.predictions:
        if p.ok:
            assert [c for c, _ in p.top] in (["Cat", "Dog"], ["Dog", "Cat"])
            assert p.top[0][1] >= p.top[1][1] and sum(prob for _, prob in p.top) == pytest.approx(1)
    for name, expected in _manifest().items():
        if expected == "ok":
            assert by_name[name].ok, (name, by_name[name].error)
        elif expected == "skip":
            assert not by_name[name].ok and by_name[name].error, name
        elif expected == "ignored":
            assert name not in by_name
    assert by_name["such.jpg"].error == "no such file or folder"
    assert len(result.failed) == sum(1 for v in _manifest().values() if v == "skip") + 1 + (
        not by_name["garbled-middle.jpg"].ok
    )


def test_predict_an_empty_folder_or_no_paths(picture_run, tmp_path):
    run_dir, _ = picture_run
    result = prediction.predict(run_dir, [tmp_path])
    assert result.predictions[0].error == "no pictures in this folder"
    with pytest.raises(RunError, match="at least one picture"):
        prediction.predict(run_dir, [])
    with pytest.raises(RunError, match="--top-k of 1 or more"):
        prediction.predict(run_dir, [tmp_path], top_k=0)


def test_predict_checks_the_weights_file_against_the_fingerprint(tmp_path):
    pytest.importorskip("headstart.extractor.runner")
    X, y = features(120)
    cache = write_cache(tmp_path / "w.h5", X, y, fp={**FP, "backbone": "mobilenet", "weights": "sha256:" + "0" * 64})
    run = training.train(cache, "logreg", tmp_path / "run", plots=False)
    other = tmp_path / "other.h5"
    other.write_bytes(b"not the weights")
    with pytest.raises(CacheMismatchError, match="Expected the weights file the run's cache was extracted with"):
        prediction.predict(run.run_dir, [other], weights=other)
    with pytest.raises(RunError, match="no such file"):
        prediction.predict(run.run_dir, [other], weights=tmp_path / "missing.h5")


@pytest.mark.slow
def test_real_pictures_with_imagenet_weights_end_to_end(tmp_path):
    """300 pet photos through MobileNet (ImageNet weights from ../shared): heads tell cats from dogs."""
    pytest.importorskip("headstart.extractor.runner")
    weights = SHARED.parent / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
    if not weights.is_file() or not (SHARED / "pets-sample").is_dir():
        pytest.skip("../shared weights or pictures are not here")
    from headstart.extractor.backbones import make_config
    from headstart.extractor.runner import embed_files

    root = SHARED / "pets-sample"
    files = sorted(root.glob("Cat/*.jpg")) + sorted(root.glob("Dog/*.jpg"))
    config = make_config("mobilenet", weights=str(weights), alpha=0.25)
    res = embed_files(files, config)
    ok = [Path(p) for p in res.ok]
    fp = config.fingerprint()
    header = CacheHeader(
        dim=res.features.shape[1], dtype="float16", fingerprint=fp, class_names=("Cat", "Dog"), root=str(root),
    )
    with CacheWriter(tmp_path / "pets.h5", header) as w:
        w.append(res.features, [int(p.parent.name == "Dog") for p in ok], [p.relative_to(root).as_posix() for p in ok])
        w.close(complete=True)
    result = training.compare(tmp_path / "pets.h5", tmp_path / "cmp")
    accuracy = {r["head"]: r["test_accuracy"] for r in result.rows}
    assert min(accuracy.values()) > 0.75, accuracy  # random weights give 0.5; ~47 test pictures
    pred = prediction.predict(tmp_path / "cmp" / "logreg", [files[0], files[-1]], weights=weights)
    assert [p.label for p in pred.predictions] == ["Cat", "Dog"]
