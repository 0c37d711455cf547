"""The HDF5 cache: schema, fingerprint, reading back, locking, and recovery after a crash."""

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

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

FP = {"backbone": "tiny", "layer": "embed", "dtype": "float16"}


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
