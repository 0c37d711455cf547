"""The HDF5 cache: schema, fingerprint, reading back, locking, and recovery after a crash."""

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import TINY_FINGERPRINT

from headstart.cache import (
    SCHEMA_VERSION,
    CacheHeader,
    CacheWriter,
    canonical_json,
    describe_diff,
    diff_settings,
    fingerprint_digest,
    open_cache,
)
from headstart.errors import CacheBusyError, CacheError

FP = TINY_FINGERPRINT


def header(dim=8, dtype="float16", classes=("cat", "dog")):
    return CacheHeader(dim=dim, dtype=dtype, fingerprint=FP, class_names=classes, root="/data")


def write_rows(path, batches=3, rows=4, dim=8, failed=()):
    with CacheWriter(path, header(dim)) as w:
        for b in range(batches):
            feats = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim) + 100 * b
            w.append(feats, [b % 2] * rows, [f"c{b % 2}/{b}-{i}.jpg" for i in range(rows)])
            w.commit()
        w.add_failed(list(failed))
        w.close(complete=True)


def test_canonical_json_and_diff():
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert fingerprint_digest({"a": 1}) == fingerprint_digest({"a": 1})
    diff = diff_settings({"layer": "fc2", "x": 1}, {"layer": "fc1", "x": 1})
    assert diff == {"layer": ("fc2", "fc1")}
    assert "layer: 'fc2' (cache) vs 'fc1' (now)" in describe_diff(diff)


def test_schema_on_disk(tmp_path):
    path = tmp_path / "c.h5"
    write_rows(path, failed=[("c0/bad.jpg", "empty file")])
    with h5py.File(path, "r") as f:
        assert f["features"].shape == (12, 8) and f["features"].dtype == np.float16
        assert f["features"].chunks[1] == 8 and f["features"].maxshape == (None, 8)
        assert f["labels"].dtype == np.int32
        assert f["paths"].asstr()[0] == "c0/0-0.jpg"
        assert f["class_names"].asstr()[:].tolist() == ["cat", "dog"]
        assert f["failed_reasons"].asstr()[0] == "empty file"
        assert f["progress"][:].tolist() == [12, 1, 1]
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert json.loads(f.attrs["fingerprint"]) == FP
        assert {"h5py", "numpy", "hdf5"} <= set(json.loads(f.attrs["versions"]))
    assert not (tmp_path / "c.h5.lock").exists()


def test_reader_slices_take_and_chunks(tmp_path):
    path = tmp_path / "c.h5"
    write_rows(path)
    with open_cache(path) as c:
        assert len(c) == 12 and c.dim == 8 and c.complete
        assert c.counts() == {"cat": 8, "dog": 4}
        full = c.read()
        assert full.dtype == np.float32 and full.shape == (12, 8)
        np.testing.assert_array_equal(c.take([11, 0, 5, 5]), full[[11, 0, 5, 5]])
        blocks = list(c.iter_chunks(rows=5))
        assert [s for s, _ in blocks] == [0, 5, 10]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), full)
        with pytest.raises(IndexError):
            c.take([12])


def test_chunks_are_about_one_mebibyte(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, header(dim=4096)) as w:
        w.close()
    with h5py.File(path) as f:
        assert f["features"].chunks == (128, 4096)  # 128 x 4096 x 2 bytes = 1 MiB


def test_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="no such file"):
        open_cache(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(CacheError, match="Expected an HDF5 feature cache"):
        open_cache(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="Expected a headstart feature cache"):
        open_cache(tmp_path / "other.h5")


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, header()):
        with pytest.raises(CacheBusyError, match="Another headstart process"):
            with CacheWriter(path, header()):
                pass


def test_a_live_cache_is_never_recovered_through_a_link_or_after_a_rename(tmp_path):
    """issue 21, finding 6: a second writer through link.h5 -> cache.h5 did not see the lock, "recovered"
    the open file and left link.h5 a separate file; locks are on the resolved file and on the file itself."""
    path, link, moved = tmp_path / "cache.h5", tmp_path / "link.h5", tmp_path / "moved.h5"
    with CacheWriter(path, header()) as w:
        w.append(np.ones((4, 8), np.float32), [0] * 4, [f"c0/{i}.jpg" for i in range(4)])
        w.commit()
        link.symlink_to(path.name)
        with pytest.raises(CacheBusyError, match="Another headstart process"):
            with CacheWriter(link, header()):
                pass
        path.rename(moved)  # the live cache under another name: its lock file stays named cache.h5.lock
        with pytest.raises(CacheBusyError, match="Another headstart process"):
            with CacheWriter(moved, header()):
                pass
        moved.rename(path)
        w.append(np.ones((4, 8), np.float32), [1] * 4, [f"c1/{i}.jpg" for i in range(4)])
    assert link.is_symlink() and len(open_cache(link)) == 8
    with CacheWriter(link, header()) as w:  # once free, a writer through the link writes the target
        w.append(np.ones((4, 8), np.float32), [1] * 4, [f"c1/more-{i}.jpg" for i in range(4)])
    assert link.is_symlink() and len(open_cache(path)) == 12


def test_extract_through_a_link_to_a_live_cache_is_refused_and_the_link_stays(tmp_path):
    from conftest import make_images
    from typer.testing import CliRunner

    from headstart.cli import app

    images = make_images(tmp_path / "images", per_class=2)
    path, link = tmp_path / "cache.h5", tmp_path / "link.h5"
    link.symlink_to(path.name)
    with CacheWriter(path, header()) as w:
        w.append(np.ones((4, 8), np.float32), [0] * 4, [f"c0/{i}.jpg" for i in range(4)])
        w.commit()
        args = ["extract", str(images), "--out", str(link), "--backbone", "tiny", "--weights", "none", "-q"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "Another headstart process is writing" in result.stderr, result.output
    assert link.is_symlink() and len(open_cache(path)) == 4


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_cache import header
    from headstart.cache import CacheWriter
    w = CacheWriter({path!r}, header()).__enter__()
    for b in range(3):
        w.append(np.full((4, 8), b, np.float32), [0] * 4, [f"c0/{{b}}-{{i}}.jpg" for i in range(4)])
        w.commit()
    w.append(np.full((4, 8), 9, np.float32), [1] * 4, [f"c1/x-{{i}}.jpg" for i in range(4)])  # never committed
    w.add_failed([("c0/lost.jpg", "never committed")])
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_crashed_writer_keeps_committed_rows_and_drops_the_rest(tmp_path):
    path = tmp_path / "c.h5"
    code = CRASH.format(tests=str(__import__("pathlib").Path(__file__).parent), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with pytest.raises(OSError):
        h5py.File(path, "r+")  # HDF5 itself refuses the file a dead writer left
    with open_cache(path) as c:  # our reader still opens it
        assert len(c) == 12 and not c.complete and c.failed == []
    with CacheWriter(path, header()) as w:  # and the next writer recovers it
        assert w.rows == 12
        assert "c1/x-0.jpg" not in w.done_paths()
        w.append(np.full((1, 8), 7, np.float32), [1], ["c1/new.jpg"])
        w.close(complete=True)
    with open_cache(path) as c:
        assert len(c) == 13 and c.complete
        assert c.paths[-1] == "c1/new.jpg"
        assert c.read()[:12].tolist() == np.repeat([0, 1, 2], 4)[:, None].repeat(8, 1).tolist()
    with h5py.File(path, "r+"):
        pass  # a normal HDF5 file again


# -- validation at the door ----------------------------------------------------------------------


def edit(path, fn):
    """Change a cache with h5py directly, as a hostile or buggy tool would."""
    with h5py.File(path, "r+", locking=False) as f:
        fn(f)


def refused(path, *fragments):
    """Reading ``path`` is one CacheError line naming the file and each fragment."""
    with pytest.raises(CacheError) as err:
        open_cache(path)
    text = str(err.value)
    assert str(path) in text and "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_progress_beyond_the_rows_is_refused_by_readers_and_writers(tmp_path):
    """Issue 7: a progress counter past the rows made info count rows that are not there and
    extract grow the file with empty rows."""
    path = tmp_path / "c.h5"
    write_rows(path)
    edit(path, lambda f: f["progress"].__setitem__(0, 20))
    before = path.read_bytes()
    refused(path, "/progress counts 20 rows but /features holds 12")
    with pytest.raises(CacheError, match="/progress counts 20 rows"):
        with CacheWriter(path, header()):
            pass
    assert path.read_bytes() == before
    edit(path, lambda f: f["progress"].__setitem__(slice(None), [-1, 0, 1]))
    refused(path, "/progress counts -1 rows")
    edit(path, lambda f: f["progress"].__setitem__(slice(None), [12, 0, 7]))
    refused(path, "completeness 7, expected 0 or 1")


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0] * 11 + [2], "/labels[11] is 2, expected 0 to 1"),
        ([-1] + [0] * 11, "/labels[0] is -1, expected 0 to 1"),
    ],
)
def test_labels_outside_the_class_list_are_refused(tmp_path, labels, message):
    """Issue 7: labels out of range gave wrong counts in info and tracebacks in train."""
    path = tmp_path / "c.h5"
    write_rows(path)
    edit(path, lambda f: f["labels"].__setitem__(slice(None), labels))
    refused(path, message)


def test_class_names_must_be_unique_folder_names(tmp_path):
    """Issue 7: duplicate class names merged two classes' counts."""
    path = tmp_path / "c.h5"
    write_rows(path)

    def names(values):
        def fn(f):
            del f["class_names"]
            f.create_dataset("class_names", data=np.array(values, dtype=object), dtype=h5py.string_dtype())

        return fn

    edit(path, names(["cat", "cat"]))
    refused(path, "/class_names holds 'cat' twice")
    edit(path, names(["cat", ""]))
    refused(path, "/class_names holds ''")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "attribute fingerprint is not JSON"),
        ("[1, 2]", "JSON type array, not an object"),
        ('{"backbone": "tiny"}', "lacks the settings layer"),
    ],
)
def test_a_fingerprint_must_be_a_json_object_of_settings(tmp_path, text, message):
    """Issue 7: a fingerprint that was not a JSON object was a traceback."""
    path = tmp_path / "c.h5"
    write_rows(path)
    edit(path, lambda f: f.attrs.__setitem__("fingerprint", text))
    refused(path, message)


def test_the_fingerprint_digest_is_recomputed(tmp_path):
    """Issue 7: fingerprint_digest was never checked; an edited fingerprint passed for the original."""
    path = tmp_path / "c.h5"
    write_rows(path)
    edit(path, lambda f: f.attrs.__setitem__("fingerprint", canonical_json({**FP, "preprocessing": "os.system"})))
    refused(path, "does not match the fingerprint", "the settings were edited")


@pytest.mark.parametrize(
    "attr, value, message",
    [
        ("root", 3, "attribute root is int64 3, expected a string"),
        ("created", np.float64(1.5), "attribute created is float64"),
        ("versions", "[]", "attribute versions is '[]', expected a JSON object"),
        ("schema_version", "1", "attribute schema_version is str '1', expected an integer"),
        ("schema_version", 99, "schema version 99, expected 1"),
    ],
)
def test_attributes_of_the_wrong_type_are_refused(tmp_path, attr, value, message):
    path = tmp_path / "c.h5"
    write_rows(path)
    edit(path, lambda f: f.attrs.__setitem__(attr, value))
    refused(path, message)


def test_features_must_be_two_dimensional_floats(tmp_path):
    path = tmp_path / "c.h5"
    write_rows(path)

    def replace(data):
        def fn(f):
            del f["features"]
            f["features"] = data

        return fn

    edit(path, replace(np.zeros((12, 8), np.int32)))
    refused(path, "/features holds int32, expected float16 or float32")
    edit(path, replace(np.zeros(12, np.float16)))
    refused(path, "/features has shape (12,), expected 2 dimensions")
    edit(path, replace(np.zeros((12, 0), np.float16)))
    refused(path, "expected at least one value per row")
    edit(path, replace(np.zeros((12, 8), np.float32)))
    refused(path, "/features holds float32, but the fingerprint says 'float16'")


def test_a_folder_a_link_loop_and_garbage_are_named(tmp_path):
    (tmp_path / "dir.h5").mkdir()
    refused(tmp_path / "dir.h5", "a folder")
    (tmp_path / "loop.h5").symlink_to(tmp_path / "loop.h5")
    refused(tmp_path / "loop.h5", "symbolic links")
    (tmp_path / "empty.h5").write_bytes(b"")
    refused(tmp_path / "empty.h5", "Expected an HDF5 feature cache")
    path = tmp_path / "c.h5"
    write_rows(path)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(cut)


def test_a_cache_that_cannot_grow_is_refused_by_the_writer(tmp_path):
    path = tmp_path / "c.h5"
    write_rows(path)

    def fixed(f):
        data = f["labels"][:]
        del f["labels"]
        f["labels"] = data

    edit(path, fixed)
    with open_cache(path) as c:
        assert len(c) == 12
    with pytest.raises(CacheError, match="/labels has a fixed size"):
        with CacheWriter(path, header()):
            pass


def test_non_finite_features_are_named_by_path(tmp_path):
    """Issue 7: NaN / inf features gave wrong accuracies or tracebacks in train and evaluate."""
    path = tmp_path / "c.h5"
    write_rows(path)

    def poison(f):
        f["features"][5, 3] = np.nan
        f["features"][9, 0] = np.inf

    edit(path, poison)
    with open_cache(path) as c:  # validation at the door does not read every feature ...
        assert c.read().shape == (12, 8)
        with pytest.raises(CacheError) as err:  # ... check_finite does, in one pass
            c.check_finite()
        assert "c1/1-1.jpg, c1/1-2.jpg" not in str(err.value)
        assert f"Expected finite features in {path}" in str(err.value)
        assert "c1/1-1.jpg" in str(err.value) and "c0/2-1.jpg" in str(err.value)
    with open_cache(path, require_finite=True) as c:  # or every read checks what it returns
        np.testing.assert_array_equal(c.read(0, 5), c.features[:5].astype(np.float32))
        with pytest.raises(CacheError, match="in the rows of c1/1-1.jpg, c0/2-1.jpg"):
            c.read()
        with pytest.raises(CacheError, match="in the rows of c0/2-1.jpg"):
            c.take([9, 0])
        assert c.take([0, 11]).shape == (2, 8)
        with pytest.raises(CacheError, match="in the rows of c1/1-1.jpg"):
            list(c.iter_chunks(rows=4))


# -- concurrency: SWMR readers beside a live writer --------------------------------------------------

APPEND = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_cache import header
    from headstart.cache import CacheWriter
    with CacheWriter({path!r}, header()) as w:
        print("open", flush=True)
        sys.stdin.readline()  # the reader opens the cache now
        for b in range({batches}):
            i = w.rows
            w.append(np.arange(i, i + 4, dtype=np.float32)[:, None].repeat(8, 1), [b % 2] * 4,
                     [f"c{{b % 2}}/{{i + k}}.jpg" for k in range(4)])
            w.commit()
            time.sleep({pause})
        w.close(complete=True)
    """
)


def _writer(tmp_path, path, batches, pause=0.0):
    code = APPEND.format(
        tests=str(__import__("pathlib").Path(__file__).parent), path=str(path), batches=batches, pause=pause
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "open\n", proc.stderr.read()
    return proc


def _consistent(c):
    """Every counted row is readable and is the row the writer wrote at that index."""
    n = len(c)
    feats = c.read()
    assert feats.shape == (n, 8) and len(c.paths) == n == len(c.labels)
    np.testing.assert_array_equal(feats[:, 0], np.arange(n, dtype=np.float32))
    assert c.paths == [f"c{lab}/{i}.jpg" for i, lab in enumerate(c.labels)]
    return n


def test_a_reader_opened_before_a_writer_appends_sees_its_rows_after_refresh(tmp_path):
    """Issue 7, part 6: readers use SWMR read mode whenever a writer may append."""
    path = tmp_path / "c.h5"
    with CacheWriter(path, header()) as w:
        w.append(np.zeros((4, 8), np.float32), [0] * 4, [f"c0/{i}.jpg" for i in range(4)])
        w.close(complete=True)
    edit(path, lambda f: f["features"].__setitem__(slice(None), np.arange(4)[:, None]))
    with open_cache(path) as c:
        assert len(c) == 4 and c.complete
        proc = _writer(tmp_path, path, batches=5)
        proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0
        assert c.refresh() == 20
        assert _consistent(c) == 24 and c.complete


def test_readers_beside_a_live_writer_process_always_see_a_consistent_cache(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, header()) as w:
        w.close()
    proc = _writer(tmp_path, path, batches=150, pause=0.005)
    seen = []
    with open_cache(path) as kept:  # one reader kept open through the writer's run ...
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while proc.poll() is None:
            with open_cache(path) as c:  # ... and fresh ones opened again and again
                seen.append(_consistent(c))
            kept.refresh()
            _consistent(kept)
        assert proc.wait() == 0, proc.stderr.read()
        kept.refresh()
        assert _consistent(kept) == 600 and kept.complete
    # Each open sees a consistent prefix of the committed rows (HDF5 shares one view of the file's
    # end among the opens of one process, so a fresh open may see fewer than the kept one).
    assert len(seen) > 1 and max(seen) <= 600


def test_schema_2_sha256_column_is_written_read_and_copied_by_rewrite(tmp_path):
    from headstart.cache import rewrite

    path = tmp_path / "c.h5"
    digests = [f"{i:064x}" for i in range(4)]
    with CacheWriter(path, header()) as w:
        w.append(np.ones((4, 8), np.float32), [0, 1, 0, 1], [f"c/{i}.jpg" for i in range(4)], sha256=digests)
        w.append(np.ones((2, 8), np.float32), [0, 1], ["c/4.jpg", "c/5.jpg"])  # digests unknown
        w.close(complete=True)
    with h5py.File(path, "r") as f:
        assert f["sha256"].dtype == np.dtype("S64") and f["sha256"].shape == (6,)
    with open_cache(path) as c:
        assert c.schema_version == 2 and c.sha256 == digests + ["", ""]
    kept = rewrite(path, tmp_path / "pruned.h5", keep=np.array([0, 1, 1, 0, 1, 0], bool))
    with open_cache(tmp_path / "pruned.h5") as c:
        assert kept == 3 and c.sha256 == [digests[1], digests[2], ""] and c.paths == ["c/1.jpg", "c/2.jpg", "c/4.jpg"]


def test_version_1_cache_still_opens_and_resumes(tmp_path):
    path = tmp_path / "v1.h5"
    write_rows(path)
    with h5py.File(path, "a") as f:  # a cache as headstart 0.1 wrote it
        del f["sha256"]
        f.attrs["schema_version"] = 1
    with open_cache(path) as c:
        assert c.schema_version == 1 and c.sha256 is None and len(c) == 12
    with CacheWriter(path, header()) as w:  # resumed: rows go on, no column appears
        w.append(np.zeros((1, 8), np.float32), [0], ["c/new.jpg"], sha256=["ab" * 32])
        w.close(complete=True)
    with open_cache(path) as c:
        assert len(c) == 13 and c.sha256 is None and c.schema_version == 1


def test_short_sha256_column_is_a_cache_error(tmp_path):
    path = tmp_path / "c.h5"
    write_rows(path)
    with h5py.File(path, "a") as f:
        f["sha256"].resize(3, axis=0)
    with pytest.raises(CacheError, match="sha256"):
        open_cache(path)


@pytest.mark.parametrize(
    "rel, problem",
    [
        ("cat/a.jpg", None),
        ("..cat/a.jpg", None),  # a name that starts with two dots is still inside
        ("cat/..a.jpg", None),
        ("", "an empty path"),
        ("/etc/passwd", "'/etc/passwd' (not a path inside the root)"),
        ("..", "'..' (not a path inside the root)"),
        ("../x.jpg", "'../x.jpg' (not a path inside the root)"),
        ("../../etc/passwd", "'../../etc/passwd' (not a path inside the root)"),
        ("cat/../../x.jpg", "'cat/../../x.jpg' (not a path inside the root)"),
        ("./cat/a.jpg", "'./cat/a.jpg' (not a path inside the root)"),
        ("cat//a.jpg", "'cat//a.jpg' (not a path inside the root)"),
    ],
)
def test_a_cached_path_must_be_a_normal_path_inside_the_root(rel, problem):
    """The rule every row's path meets on open (closes mutants of validate._check_path that survived)."""
    from headstart.cache.validate import _check_path

    assert _check_path(rel) == problem


def test_an_unreadable_string_outside_swmr_is_an_error_not_a_shorter_list():
    """Only a SWMR reader beside a live writer may read a prefix of /paths; a damaged file (HDF5's
    "EOA" read errors come from truncated files too) raises (a mutant reading `or` survived)."""
    from types import SimpleNamespace

    from headstart.cache.validate import _visible_text

    class Broken:
        file = SimpleNamespace(swmr_mode=False, filename="c.h5")

        def asstr(self):
            raise OSError("Can't read data (addr overflow, addr = 9, size = 4, eoa = 8): EOA")

    with pytest.raises(OSError, match="EOA"):
        _visible_text(Broken(), 3, "/paths")
