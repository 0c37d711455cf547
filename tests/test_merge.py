"""merge: shards joined into one cache (virtual or a copy), checked first; broken inputs are one line."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from headstart.cache import open_cache
from headstart.cache.merge import merge
from headstart.cli import app
from headstart.errors import CacheError, MergeError
from headstart.extractor.options import make_config
from headstart.extractor.runner import extract

runner = CliRunner()


def rows(path):
    with open_cache(path) as c:
        feats = c.read(dtype=np.float16)
        return (
            {p: (int(lab), feats[i]) for i, (p, lab) in enumerate(zip(c.paths, c.labels))},
            sorted(c.failed),
            c.class_names,
            c.fingerprint,
            c.complete,
        )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Made once for the module: a local run of a small folder and its 3 shards (one unreadable picture)."""
    base = tmp_path_factory.mktemp("merge")
    images = make_images(base / "images")
    (images / "dog" / "empty.jpg").write_bytes(b"")
    config = make_config("tiny", weights="none", precision="float32")
    extract(images, base / "whole.h5", config, batch_size=4)
    for i in range(3):
        extract(images, base / "parts" / f"part-{i}.h5", config, batch_size=4, shards=3, shard=i)
    return base


@pytest.fixture
def shards(built, image_folder, tmp_path):
    """This test's copies of the local run and the shards; ``image_folder`` holds the same pictures."""
    (image_folder / "dog" / "empty.jpg").write_bytes(b"")
    shutil.copytree(built / "parts", tmp_path / "parts")
    shutil.copy(built / "whole.h5", tmp_path / "whole.h5")
    return tmp_path / "whole.h5", [tmp_path / "parts" / f"part-{i}.h5" for i in range(3)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("copy", [False, True])
def test_merge_of_three_shards_equals_one_local_run(shards, tmp_path, copy):
    whole, parts = shards
    out = tmp_path / "merged.h5"
    result = invoke("merge", *parts, *(["--copy"] if copy else []), "--out", out)
    assert result.exit_code == 0, result.output
    assert "Merged 3 caches: 12 rows, 1 skipped" in " ".join(result.output.split())
    assert_same(rows(out), rows(whole))
    with h5py.File(out, "r") as f:
        assert f["features"].is_virtual is (not copy)
    info = json.loads(invoke("info", out, "--json").output)
    assert info["rows"] == 12 and info["complete"] and info["classes"] == {"cat": 6, "dog": 6}


def assert_same(a, b):
    (ra, fa, ca, pa, da), (rb, fb, cb, pb, db) = a, b
    assert ra.keys() == rb.keys() and (fa, ca, pa, da) == (fb, cb, pb, db)
    for p in ra:
        assert ra[p][0] == rb[p][0]
        np.testing.assert_array_equal(ra[p][1], rb[p][1])


def test_a_merged_cache_trains_and_is_extended_by_a_later_extract(shards, image_folder, tiny_config, tmp_path):
    whole, parts = shards
    out = tmp_path / "merged.h5"
    merge(out, parts)
    trained = invoke("train", out, "--head", "logreg", "--out", tmp_path / "run", "--no-plots", "--split", "50,25,25")
    assert trained.exit_code == 0, trained.output
    shutil.copy(image_folder / "cat" / "cat.0.jpg", image_folder / "cat" / "new.jpg")
    res = extract(image_folder, out, tiny_config, batch_size=4, root_moved=True)  # a copy of the pictures
    assert (res.extracted, res.already, res.total_rows) == (1, 13, 13)
    with h5py.File(out, "r") as f:
        assert not f["features"].is_virtual  # the first extract made it self-contained
    for p in parts:
        p.unlink()
    extended, before = rows(out)[0], rows(whole)[0]
    assert len(extended) == 13 and all(np.array_equal(extended[p][1], before[p][1]) for p in before)


def test_a_writer_refuses_a_merged_cache_until_its_caller_makes_it_self_contained(shards, tmp_path):
    """The writer does not reach up into merge: whoever appends (extract) calls make_self_contained."""
    from headstart.cache import CacheHeader, CacheLock, CacheWriter
    from headstart.cache.merge import make_self_contained

    whole, parts = shards
    out = tmp_path / "merged.h5"
    merge(out, parts)
    with open_cache(out) as c:
        header = CacheHeader(
            dim=c.dim, dtype=str(c.dtype), fingerprint=c.fingerprint, class_names=tuple(c.class_names), root=c.root
        )
    with pytest.raises(CacheError, match="make_self_contained"):
        with CacheWriter(out, header):
            pass
    with CacheLock(out):
        make_self_contained(out)
    with h5py.File(out, "r") as f:
        assert not f["features"].is_virtual
    with CacheWriter(out, header) as w:
        assert w.rows == len(rows(whole)[0])


@pytest.mark.parametrize("change", ["deleted", "moved", "re-extracted"])
def test_a_merged_cache_whose_shard_is_gone_or_changed_is_refused(shards, image_folder, tiny_config, tmp_path, change):
    whole, parts = shards
    out = tmp_path / "merged.h5"
    merge(out, parts)
    if change == "deleted":
        parts[1].unlink()
    elif change == "moved":
        (tmp_path / "other").mkdir()
        out = shutil.move(out, tmp_path / "other" / "merged.h5")  # without its shards
    else:
        parts[1].unlink()
        extract(image_folder, parts[1], tiny_config, batch_size=4, shards=3, shard=1, limit_per_class=2)
    with pytest.raises(CacheError, match="merge them again"):
        open_cache(out)
    assert_clean_error(invoke("info", out), "Expected the shard")


def test_mismatched_settings_duplicated_paths_and_missing_shards_are_refused(shards, image_folder, tmp_path):
    whole, parts = shards
    out = tmp_path / "m.h5"
    other = make_config("tiny", weights="none", precision="float32", resize="crop")
    extract(image_folder, tmp_path / "crop.h5", other, batch_size=4, shards=3, shard=0)
    assert_clean_error(
        invoke("merge", tmp_path / "crop.h5", parts[1], parts[2], "--out", out),
        "Expected caches extracted with the same settings",
        "resize: 'crop'",
    )
    assert_clean_error(invoke("merge", whole, parts[0], "--out", out), "Expected shards of one folder only")
    shutil.copy(parts[0], tmp_path / "again.h5")
    assert_clean_error(
        invoke("merge", parts[0], tmp_path / "again.h5", parts[1], parts[2], "--out", out), "Expected each shard once"
    )
    assert_clean_error(invoke("merge", parts[0], parts[0], "--out", out), "Expected each cache once")
    assert_clean_error(
        invoke("merge", parts[0], parts[1], "--out", out), "Expected all 3 shards", "missing: 2", "--partial"
    )
    with pytest.raises(MergeError, match="Expected all 3 shards"):
        merge(out, parts[:2])
    assert invoke("merge", parts[0], parts[1], "--partial", "--out", out).exit_code == 0
    assert_clean_error(invoke("merge", parts[0], parts[1], parts[2], "--out", out), "--overwrite")
    # two whole-folder caches of the same pictures: every path twice
    shutil.copy(whole, tmp_path / "whole2.h5")
    assert_clean_error(
        invoke("merge", whole, tmp_path / "whole2.h5", "--out", tmp_path / "w.h5"),
        "Expected each picture in one cache only",
    )
    assert not (tmp_path / "w.h5").exists()


def test_a_tampered_fingerprint_digest_is_refused(shards, tmp_path):
    whole, parts = shards
    with h5py.File(parts[2], "r+") as f:
        f.attrs["fingerprint_digest"] = "0" * 64
    assert_clean_error(invoke("merge", *parts, "--out", tmp_path / "m.h5"), "does not match the fingerprint")


HOSTILE = {
    "random bytes": "(Unable to synchronously open file (file signature not found))",
    "empty": "(Unable to synchronously open file (file signature not found))",
    "not a cache": "(no dataset /features, /labels, /paths",
    "folder": "Expected a cache file to merge. Received: {bad} (a folder)",
    "missing": "Expected a cache file to merge. Received: {bad} (no such file)",
    "rows past the paths": "(/progress counts 1000 rows but /features holds 7)",
    "labels out of range": "(/labels[0] is 7, expected 0 to 1",
    "bad shard record": "Expected a shard record like",
    "incomplete": "Expected complete caches. Received: {bad} (incomplete, 7 rows",
    # HDF5's ways to read another file (issue 21, finding 9; issue 19, item 4)
    "sha256 stored in secret.txt": "(/sha256 keeps its bytes in another file ('{secret}')",
    "features stored in secret.txt": "(/features keeps its bytes in another file ('{secret}')",
    "labels as an external link": "(/labels is an external link to '{secret}'",
    "paths as a soft link": "(/paths is a soft link to '/class_names'",
    "a group holding an external link": "(/extra/x is an external link to '{secret}'",
    "labels as a virtual dataset": "(/labels is a virtual dataset (it reads other files)",
}
"""Each broken or hostile shard, and the reason the refusal must give (a refusal for another reason fails)."""


def _plant(f: h5py.File, hostile: str, secret: Path) -> None:
    """Make the open copy of a good shard ``f`` hostile."""
    n = f["paths"].shape[0]
    if hostile == "rows past the paths":
        f["progress"][0] = 1000
    elif hostile == "labels out of range":
        f["labels"][0] = 7
    elif hostile == "bad shard record":
        f.attrs["shard"] = '{"index": "2; rm -rf /", "count": 3}'
    elif hostile == "incomplete":
        f["progress"][2] = 0
    elif hostile == "sha256 stored in secret.txt":
        if "sha256" in f:
            del f["sha256"]
        f.create_dataset("sha256", shape=(n,), dtype="S64", external=[(str(secret), 0, 64 * n)])
    elif hostile == "features stored in secret.txt":
        shape, dtype = f["features"].shape, f["features"].dtype
        del f["features"]
        f.create_dataset("features", shape=shape, dtype=dtype, external=[(str(secret), 0, shape[0] * shape[1] * 2)])
    elif hostile == "labels as an external link":
        del f["labels"]
        f["labels"] = h5py.ExternalLink(str(secret), "/labels")
    elif hostile == "paths as a soft link":
        del f["paths"]
        f["paths"] = h5py.SoftLink("/class_names")
    elif hostile == "a group holding an external link":
        f["extra/x"] = h5py.ExternalLink(str(secret), "/x")
    elif hostile == "labels as a virtual dataset":
        with h5py.File(secret.with_suffix(".h5"), "w") as other:
            other["labels"] = np.zeros(n, dtype=np.int32)
        layout = h5py.VirtualLayout(shape=(n,), dtype=np.int32)
        layout[:] = h5py.VirtualSource(str(secret.with_suffix(".h5")), "labels", shape=(n,))
        del f["labels"]
        f.create_virtual_dataset("labels", layout)
    else:
        raise ValueError(hostile)


@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_broken_or_hostile_shards_are_one_line_and_nothing_is_written(shards, tmp_path, hostile):
    whole, parts = shards
    bad = tmp_path / "bad.h5"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-" * 100_000)
    if hostile == "random bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif hostile == "empty":
        bad.write_bytes(b"")
    elif hostile == "not a cache":
        with h5py.File(bad, "w") as f:
            f["x"] = 1
    elif hostile == "folder":
        bad.mkdir()
    elif hostile != "missing":
        shutil.copy(parts[2], bad)
        with h5py.File(bad, "r+") as f:
            _plant(f, hostile, secret)
    for copy in ([], ["--copy"]):  # --copy reads every byte of the shards into the merged file
        out = tmp_path / "m.h5"
        result = invoke("merge", parts[0], parts[1], bad, *copy, "--out", out)
        assert_clean_error(result, "Error:", HOSTILE[hostile].format(bad=bad, secret=secret))
        assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_out_that_is_not_a_cache_is_never_overwritten(shards, tmp_path):
    whole, parts = shards
    precious = tmp_path / "notes.h5"
    precious.write_text("my notes")
    assert_clean_error(invoke("merge", *parts, "--overwrite", "--out", precious), "not a headstart cache")
    assert precious.read_text() == "my notes"
    assert_clean_error(invoke("merge", *parts, "--out", parts[0]), "Expected OUT to be a new file")


@pytest.mark.parametrize("copy", [False, True])
def test_optional_per_row_datasets_of_schema_2_are_carried(shards, tmp_path, copy):
    whole, parts = shards
    expected = {}
    for i, p in enumerate(parts):
        with h5py.File(p, "r+") as f:
            n = int(f["progress"][0])
            paths = f["paths"].asstr()[:n]
            digests = np.array([(f"{i}" * 64)[:64].encode()] * n, dtype="S64")
            if "sha256" in f:  # extract hashes each picture; plant recognisable digests instead
                del f["sha256"]
            f.create_dataset("sha256", data=digests, maxshape=(None,))
            if i == 1:  # only one shard has views: the others' rows are pictures (view 0)
                f.create_dataset("view", data=np.ones(n, dtype="int8"), maxshape=(None,))
            for path, d in zip(paths, digests):
                expected[path] = (d, 1 if i == 1 else 0)
    out = tmp_path / "m.h5"
    merge(out, parts, copy=copy)
    with h5py.File(out, "r") as f:
        got = {p: (d, int(v)) for p, d, v in zip(f["paths"].asstr()[:], f["sha256"][:], f["view"][:])}
        assert f["sha256"].dtype == np.dtype("S64") and f["view"].dtype == np.dtype("int8")
    assert got == expected


def test_a_merged_cache_whose_shard_reads_yet_another_file_is_refused(shards, tmp_path):
    """A merged cache's /features is the one virtual dataset allowed; its shards' own features may not be."""
    whole, parts = shards
    out = tmp_path / "merged.h5"
    merge(out, parts)
    other = tmp_path / "other.h5"
    with h5py.File(parts[1], "r+") as f:
        shape, dtype = f["features"].shape, f["features"].dtype
        with h5py.File(other, "w") as o:
            o["features"] = np.ones(shape, dtype=dtype)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(other), "features", shape=shape)
        del f["features"]
        f.create_virtual_dataset("features", layout)
    with pytest.raises(CacheError, match="its features are themselves virtual"):
        open_cache(out)
    assert_clean_error(invoke("info", out), "its features are themselves virtual")


def test_extract_into_a_cache_with_a_fixed_size_per_row_dataset_is_one_line(shards, tmp_path):
    """A /sha256 written without chunks cannot grow: one line naming it, not h5py's TypeError."""
    from headstart.cache import CacheHeader, CacheWriter

    cache = shards[1][0]
    with h5py.File(cache, "r+") as f:
        digests = f["sha256"][:]
        del f["sha256"]
        f["sha256"] = digests  # contiguous, fixed size
    with open_cache(cache) as c:
        header = CacheHeader(
            dim=c.dim, dtype=str(c.dtype), fingerprint=c.fingerprint, class_names=tuple(c.class_names), root=c.root
        )
    with pytest.raises(CacheError, match="/sha256 has a fixed size"):
        with CacheWriter(cache, header):
            pass


def test_the_old_positional_form_still_merges_with_a_deprecation_note(shards, tmp_path):
    """`merge OUT SHARDS...` (before --out) works for one more release and says what to write instead."""
    whole, parts = shards
    result = runner.invoke(app, ["merge", str(tmp_path / "old.h5"), *map(str, parts)])
    assert result.exit_code == 0, result.output
    assert_same(rows(tmp_path / "old.h5"), rows(whole))
    assert "Deprecated" in result.stderr and "--out" in result.stderr
    assert "Deprecated" not in result.stdout


def test_merge_without_out_and_one_cache_asks_for_out(shards):
    _, parts = shards
    assert_clean_error(invoke("merge", parts[0]), "Expected --out")
