"""headstart similar: nearest pictures by centred cosine, from a cached path or a new file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_images, write_cache
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import SimilarError
from headstart.heads.split import SplitSpec, assign
from headstart.similar import ExactSearch, similar

runner = CliRunner()


def _clusters(tmp_path, n=60, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, dim))
    labels = np.arange(n) % 3
    x = centres[labels] + rng.normal(0, 0.3, (n, dim))
    paths = [f"c{lab}/p{i}.jpg" for i, lab in enumerate(labels)]
    return write_cache(tmp_path / "c.h5", x, labels, paths, ("a", "b", "c")), x, labels, paths


def test_the_neighbours_are_the_exact_cosine_ranking_of_centred_features(tmp_path):
    cache, x, labels, paths = _clusters(tmp_path)
    (res,) = similar(cache, [paths[7]], k=5)
    centred = x - x.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    sims = unit @ unit[7]
    sims[7] = -np.inf  # a cached query is not its own neighbour
    expected = list(np.argsort(-sims, kind="stable")[:5])
    assert [n.row for n in res.neighbours] == expected
    np.testing.assert_allclose([n.similarity for n in res.neighbours], sims[expected], atol=1e-5)
    assert res.source == "cache" and all(n.label == "abc"[labels[7]] for n in res.neighbours)


def test_an_exact_copy_comes_first(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (40, 32))
    x[25] = x[3]  # a copy of picture 3
    paths = [f"a/{i}.jpg" for i in range(40)]
    cache = write_cache(tmp_path / "c.h5", x, [i % 2 for i in range(40)], paths, ("a", "b"))
    (res,) = similar(cache, ["a/3.jpg"], k=3)
    assert res.neighbours[0].path == "a/25.jpg" and res.neighbours[0].similarity == pytest.approx(1, abs=1e-5)
    (again,) = similar(cache, ["a/3.jpg"], k=3, keep_self=True)
    assert {again.neighbours[0].path, again.neighbours[1].path} == {"a/3.jpg", "a/25.jpg"}


def test_blocks_from_the_file_give_the_same_answer_as_memory(tmp_path):
    cache, x, labels, paths = _clusters(tmp_path, n=100)
    from headstart.cache import open_cache

    with open_cache(cache) as c:
        mem = ExactSearch(c, in_memory=True, block_rows=7)
        disk = ExactSearch(c, in_memory=False, block_rows=13)
        q = np.stack([mem.vector(0), mem.vector(50)])
        assert mem.search(q, 8) == disk.search(q, 8)


def test_splits_can_be_excluded_or_searched_alone(tmp_path):
    cache, x, labels, paths = _clusters(tmp_path, n=90)
    codes = assign(paths, SplitSpec())
    (res,) = similar(cache, [paths[0]], k=90, exclude_split=["test"])
    assert res.neighbours and all(n.split != "test" for n in res.neighbours)
    assert len(res.neighbours) == int((codes != 2).sum()) - (1 if codes[0] != 2 else 0)
    (only,) = similar(cache, [paths[0]], k=90, only_split=["test"])
    assert {n.split for n in only.neighbours} == {"test"}


def test_bad_queries_are_one_clear_line(tmp_path):
    cache, *_ = _clusters(tmp_path)
    with pytest.raises(SimilarError, match="Expected a picture of .* or a picture file. Received: 'nope.jpg'"):
        similar(cache, ["nope.jpg"])
    with pytest.raises(SimilarError, match="-k of 1 or more"):
        similar(cache, ["c0/p0.jpg"], k=0)
    with pytest.raises(SimilarError, match="split among train, val, test"):
        similar(cache, ["c0/p0.jpg"], exclude_split=["tset"])
    result = runner.invoke(app, ["similar", str(cache), "nope.jpg"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and "nope.jpg" in result.stderr


def test_cli_table_json_and_montage(tmp_path):
    cache, x, labels, paths = _clusters(tmp_path)
    result = runner.invoke(app, ["similar", str(cache), paths[4], "-k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "rank\tsimilarity\tclass\tsplit\tpath" and len(lines) == 5
    data = json.loads(runner.invoke(app, ["similar", str(cache), paths[4], "-k", "3", "--json"]).stdout)
    assert [n["path"] for n in data["results"][0]["neighbours"]] == [line.split("\t")[-1] for line in lines[2:]]
    out = tmp_path / "m" / "near.png"
    result = runner.invoke(app, ["similar", str(cache), paths[4], "-k", "3", "--montage", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_new_picture_file_is_embedded_with_the_caches_settings(tmp_path, tiny_config):
    from headstart.extractor.runner import extract

    images = make_images(tmp_path / "images", per_class=8)
    cache = tmp_path / "c.h5"
    extract(images, cache, tiny_config)
    outside = tmp_path / "elsewhere" / "query.jpg"
    outside.parent.mkdir()
    shutil.copyfile(images / "dog" / "dog.5.jpg", outside)  # the same bytes, under another name
    (from_file,) = similar(cache, [str(outside)], k=3)
    assert from_file.source == "file"
    assert from_file.neighbours[0].path == "dog/dog.5.jpg"
    assert from_file.neighbours[0].similarity == pytest.approx(1, abs=1e-4)
    (from_cache,) = similar(cache, ["dog/dog.5.jpg"], k=3, keep_self=True)
    assert from_cache.neighbours[0].path == "dog/dog.5.jpg"
    (by_full_path,) = similar(cache, [str(images / "dog" / "dog.5.jpg")], k=2)
    assert by_full_path.source == "cache"


def _recall(exact_hits, approx_hits) -> float:
    return np.mean([len({r for r, _ in a} & {r for r, _ in e}) / len(e) for e, a in zip(exact_hits, approx_hits)])


def test_the_index_recalls_what_exact_search_finds_and_follows_the_cache(tmp_path):
    pytest.importorskip("usearch")
    from headstart.cache import open_cache
    from headstart.similar_index import index_folder, open_index

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3000, 64)) + np.repeat(rng.normal(0, 2, (30, 64)), 100, axis=0)
    paths = [f"a/{i}.jpg" for i in range(3000)]
    cache = write_cache(tmp_path / "c.h5", x, [i % 2 for i in range(3000)], paths, ("a", "b"))
    with open_cache(cache) as c:
        exact = ExactSearch(c)
        queries = np.stack([exact.vector(r) for r in range(0, 3000, 30)])
        approx = open_index(c)
        assert _recall(exact.search(queries, 10), approx.search(queries, 10)) >= 0.95
    assert (index_folder(cache) / "index.json").is_file()
    (res,) = similar(cache, ["a/5.jpg"], k=3, index=True)
    (ref,) = similar(cache, ["a/5.jpg"], k=3)
    assert [n.path for n in res.neighbours][:1] == [n.path for n in ref.neighbours][:1]
    # The cache changes (made again, fewer rows): the old index is never used, it is built again.
    (tmp_path / "c.h5").unlink()
    write_cache(tmp_path / "c.h5", x[:2000], [i % 2 for i in range(2000)], paths[:2000], ("a", "b"))
    (res,) = similar(cache, ["a/5.jpg"], k=3, index=True)
    meta = json.loads((index_folder(cache) / "index.json").read_text())
    assert meta["rows"] == 2000 and all(n.row < 2000 for n in res.neighbours)


def test_an_index_folder_that_headstart_did_not_write_is_not_deleted(tmp_path):
    pytest.importorskip("usearch")
    cache, *_ = _clusters(tmp_path)
    folder = tmp_path / "c.h5.index"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    result = runner.invoke(app, ["similar", str(cache), "c0/p0.jpg", "--index"])
    assert result.exit_code == 2 and "Expected" in result.stderr
    assert (folder / "mine.txt").read_text() == "keep me"
