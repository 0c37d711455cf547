"""extract --views flip: a mirrored row per picture (schema 2), kept in one split, averaged when scored."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def flip_config():
    from headstart.extractor.options import make_config

    return make_config("tiny", weights="none", precision="float32", dtype="float32", views="flip")


def test_each_picture_gets_its_mirror(image_folder, flip_config, tmp_path):
    from headstart import open_cache
    from headstart.extractor.decode import load_image
    from headstart.extractor.embed import Embedder
    from headstart.extractor.runner import extract

    res = extract(image_folder, tmp_path / "c.h5", flip_config)
    assert res.extracted == 12
    with open_cache(tmp_path / "c.h5") as cache:
        assert len(cache) == 24 and cache.schema_version == 2
        assert sorted(cache.views.tolist()) == [0] * 12 + [1] * 12
        for path in set(cache.paths):
            rows = [i for i, p in enumerate(cache.paths) if p == path]
            assert sorted(cache.views[rows].tolist()) == [0, 1]
            assert len({int(cache.labels[i]) for i in rows}) == 1
        i = int(np.flatnonzero(cache.views == 1)[0])
        pixels = load_image(image_folder / cache.paths[i], (32, 32), resampler=flip_config.resampler)
        expected = Embedder(flip_config, 1)([pixels[:, ::-1]])[0]
        np.testing.assert_allclose(cache.read(i, i + 1)[0], expected, rtol=1e-4, atol=1e-5)
        assert cache.fingerprint["views"] == "flip"


def test_views_none_keeps_the_old_fingerprint_and_no_view_dataset(image_folder, tiny_config, tmp_path):
    from headstart import open_cache
    from headstart.extractor.runner import extract

    assert "views" not in tiny_config.fingerprint()
    extract(image_folder, tmp_path / "c.h5", tiny_config)
    with open_cache(tmp_path / "c.h5") as cache:
        assert cache.views is None and len(cache) == 12
    with h5py.File(tmp_path / "c.h5", "a") as f:  # a cache written by headstart 0.1 (schema 1) still opens
        f.attrs["schema_version"] = 1
    with open_cache(tmp_path / "c.h5") as cache:
        assert cache.schema_version == 1 and len(cache) == 12


def test_other_views_on_an_existing_cache_is_one_line(image_folder, tmp_path):
    args = [
        "extract",
        str(image_folder),
        "--out",
        str(tmp_path / "c.h5"),
        "--backbone",
        "tiny",
        "--weights",
        "none",
        "--precision",
        "float32",
        "--quiet",
    ]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--views", "flip"])
    assert result.exit_code == 2 and "views" in result.output and "Traceback" not in result.output
    bad = runner.invoke(app, [*args, "--views", "rotate", "--out", str(tmp_path / "d.h5")])
    assert bad.exit_code == 2 and "Expected --views among none, flip" in bad.output


def test_resume_and_prune_keep_pairs(image_folder, flip_config, tmp_path):
    from headstart import open_cache
    from headstart.extractor.runner import extract

    extract(image_folder, tmp_path / "c.h5", flip_config, limit_per_class=2)
    res = extract(image_folder, tmp_path / "c.h5", flip_config)
    assert (res.already, res.extracted, res.total_rows) == (4, 8, 24)
    (image_folder / "cat" / "cat.0.jpg").unlink()
    res = extract(image_folder, tmp_path / "c.h5", flip_config, prune=True)
    assert res.pruned == 2 and res.total_rows == 22
    with open_cache(tmp_path / "c.h5") as cache:
        assert len(cache.views) == 22 and "cat/cat.0.jpg" not in cache.paths
        assert all(cache.paths.count(p) == 2 for p in cache.paths)


def test_per_picture_averages_rows_of_one_path():
    from headstart.heads.views import per_picture

    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6]])
    avg, labels, first = per_picture(proba, np.array([1, 0, 1, 0]), ["b", "a", "b", "a"])
    np.testing.assert_allclose(avg, [[0.7, 0.3], [0.3, 0.7]])
    assert labels.tolist() == [1, 0] and first.tolist() == [0, 1]


def test_heads_train_on_views_and_score_pictures(tmp_path, flip_config):
    from conftest import make_images

    from headstart import open_cache
    from headstart.extractor.runner import extract
    from headstart.heads.split import SplitSpec, assign

    folder = make_images(tmp_path / "pics", per_class=20)
    extract(folder, tmp_path / "c.h5", flip_config)
    with open_cache(tmp_path / "c.h5") as cache:
        codes = assign(cache.paths, SplitSpec())
        by_path = {}
        for p, c in zip(cache.paths, codes):
            by_path.setdefault(p, set()).add(int(c))
        assert all(len(s) == 1 for s in by_path.values())  # both views of a picture in one split
        test_pictures = len({p for p, c in zip(cache.paths, codes) if c == 2})
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", str(tmp_path / "c.h5"), "--heads", "logreg", "--out", str(out), "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "logreg" / "metrics.json").read_text())
    run = json.loads((out / "logreg" / "run.json").read_text())
    assert metrics["test"]["n"] == test_pictures
    assert sum(run["split"]["counts"]["test"].values()) == 2 * test_pictures  # rows: both views
    ev = runner.invoke(app, ["evaluate", str(out / "logreg"), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["metrics"]["n"] == test_pictures
    mis = runner.invoke(app, ["misclassified", str(out / "logreg"), "-n", "50"])
    assert mis.exit_code == 0, mis.output
    assert f"of {test_pictures} test pictures" in mis.output
    listed = [line.split("\t")[0] for line in mis.output.splitlines() if "\t" in line]
    assert len(listed) == len(set(listed))
    files = [str(folder / "cat" / "cat.0.jpg"), str(folder / "dog" / "dog.0.jpg")]
    pred = runner.invoke(app, ["predict", str(out / "logreg"), *files])
    assert pred.exit_code == 0, pred.output
    assert [line.split("\t")[1].split()[0] for line in pred.output.splitlines() if "\t" in line] == ["cat", "dog"]


def test_predict_averages_the_mirror(tmp_path, flip_config):
    from conftest import make_images

    from headstart.extractor.embed import embed_files
    from headstart.heads.training import train
    from headstart.ship.predict import predict

    folder = make_images(tmp_path / "pics", per_class=10)
    from headstart.extractor.runner import extract

    extract(folder, tmp_path / "c.h5", flip_config)
    train(tmp_path / "c.h5", "logreg", tmp_path / "run", plots=False)
    f = folder / "cat" / "cat.1.jpg"
    res = embed_files([f], flip_config)
    assert res.features.shape == res.flipped.shape == (1, 32)
    from headstart.heads.run_reader import load_run

    _, head = load_run(tmp_path / "run")
    expected = (head.predict_proba(res.features) + head.predict_proba(res.flipped)) / 2
    got = predict(tmp_path / "run", [f]).predictions[0].top[0][1]
    assert got == pytest.approx(float(expected.max()), abs=1e-5)


def test_a_broken_view_column_is_one_line(image_folder, flip_config, tmp_path):
    from headstart.extractor.runner import extract

    extract(image_folder, tmp_path / "c.h5", flip_config)
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f["view"][3] = 5
    result = runner.invoke(app, ["info", str(tmp_path / "c.h5")])
    assert result.exit_code == 2 and "/view[3] is not 0 or 1" in result.output
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f["view"][3] = 0
        f["view"].resize((10,))
    result = runner.invoke(app, ["info", str(tmp_path / "c.h5")])
    assert result.exit_code == 2 and "/view holds 10" in result.output and "Traceback" not in result.output
