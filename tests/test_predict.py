"""Tests of headstart.ship.predict: new pictures through the run's backbone and head."""

from pathlib import Path

import pytest
from heads_fixtures import FP, SHARED, cache, features, logreg_run, write_cache  # noqa: F401 - fixtures

from headstart.cache import CacheHeader, CacheWriter
from headstart.errors import CacheMismatchError, RunError
from headstart.heads import training
from headstart.heads.split import SplitSpec
from headstart.ship import predict as prediction

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
    from headstart.extractor.embed import embed_files

    try:
        from headstart.extractor.options import make_config

        config = make_config("tiny", weights="none", input_size=32)
    except ImportError:
        from headstart.settings.config import ExtractionConfig

        config = ExtractionConfig(backbone="tiny", layer="embed", weights="none", seed=0, input_size=32)
    root = SHARED / "pets-sample"
    files = sorted(root.glob("Cat/*.jpg"))[:12] + sorted(root.glob("Dog/*.jpg"))[:12]
    res = embed_files(files, config)
    ok = [Path(p) for p in res.ok]
    fp = config.fingerprint()
    tmp = tmp_path_factory.mktemp("pictures")
    header = CacheHeader(
        dim=res.features.shape[1],
        dtype="float16",
        fingerprint=fp,
        class_names=("Cat", "Dog"),
        root=str(root),
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
    mobilenet = {
        "backbone": "mobilenet",
        "layer": "conv_pw_13_relu",
        "pooling": "avg",
        "alpha": 0.25,
        "weights": "sha256:" + "0" * 64,
        "seed": None,
        "input_size": 224,
    }
    cache = write_cache(tmp_path / "w.h5", X, y, fp={**FP, **mobilenet})
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
    from headstart.extractor.embed import embed_files
    from headstart.extractor.options import make_config

    root = SHARED / "pets-sample"
    files = sorted(root.glob("Cat/*.jpg")) + sorted(root.glob("Dog/*.jpg"))
    config = make_config("mobilenet", weights=str(weights), alpha=0.25)
    res = embed_files(files, config)
    ok = [Path(p) for p in res.ok]
    fp = config.fingerprint()
    header = CacheHeader(
        dim=res.features.shape[1],
        dtype="float16",
        fingerprint=fp,
        class_names=("Cat", "Dog"),
        root=str(root),
    )
    with CacheWriter(tmp_path / "pets.h5", header) as w:
        w.append(res.features, [int(p.parent.name == "Dog") for p in ok], [p.relative_to(root).as_posix() for p in ok])
        w.close(complete=True)
    result = training.compare(tmp_path / "pets.h5", tmp_path / "cmp")
    accuracy = {r["head"]: r["test_accuracy"] for r in result.rows}
    assert min(accuracy.values()) > 0.75, accuracy  # random weights give 0.5; ~47 test pictures
    pred = prediction.predict(tmp_path / "cmp" / "logreg", [files[0], files[-1]], weights=weights)
    assert [p.label for p in pred.predictions] == ["Cat", "Dog"]


# -- memory of predict with an exported model (issue 21, finding 12) ------------------------------


def test_predict_with_an_exported_model_holds_a_bounded_number_of_pixels(tmp_path, monkeypatch):
    """8 large photos of one size, then 40 of different sizes: the decoded pixels held at any moment,
    and each batch given to the model, stay within a budget instead of growing with the pictures."""
    import numpy as np

    from headstart.extractor import decode
    from headstart.ship import predict as ship_predict

    big = (3000, 4000)
    sizes = [big] * 8 + [(1000 + i, 800) for i in range(40)]
    files = []
    for i in range(len(sizes)):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(b"decoded by the stub below")
    live = {"pixels": 0, "peak": 0}

    def load_pixels(path):
        h, w = sizes[int(Path(path).stem)]
        live["pixels"] += h * w
        live["peak"] = max(live["peak"], live["pixels"])
        return np.zeros((h, w, 3), np.uint8)

    class Model:
        batches: list[tuple[int, ...]] = []

        def predict_on_batch(self, x):
            self.batches.append(x.shape)
            live["pixels"] -= x.shape[0] * x.shape[1] * x.shape[2]
            return np.tile([0.25, 0.75], (len(x), 1)).astype(np.float32)

    model = Model()
    monkeypatch.setattr(ship_predict, "load_exported", lambda path: (model, ["a", "b"]))
    monkeypatch.setattr(decode, "load_pixels", load_pixels)
    res = prediction.predict_exported(tmp_path / "m.keras", files, batch_size=32)
    assert [p.ok for p in res.predictions] == [True] * len(sizes)
    assert [p.label for p in res.predictions] == ["b"] * len(sizes)
    one = big[0] * big[1]
    assert live["peak"] <= 2 * one  # flat: not 8 large photos at once, not every size kept to the end
    assert all(n == 1 or n * h * w <= 2 * one for n, h, w, _ in model.batches)
    assert sum(n for n, *_ in model.batches) == len(sizes)
