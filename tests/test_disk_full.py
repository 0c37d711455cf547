"""A full disk (issue 21, findings 3, 4, 5): one line, exit 2, what was committed kept and resumable.

Run for real on a small tmpfs (root only; CI runs as root) and, where cheap, by injecting ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headstart.cli import app
from headstart.heads import sweep as S
from headstart.heads import trials as T
from headstart.heads.rundir import JOURNAL

sys.path.insert(0, str(Path(__file__).parent))
from diskfull import fill, small_tmpfs  # noqa: E402
from heads_fixtures import features, write_cache  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    X, y = features(n=300, sep=0.5)
    return write_cache(tmp_path_factory.mktemp("full") / "feats.h5", X, y)


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# -- sweep (finding 5) ------------------------------------------------------------------------------


def test_a_sweep_on_a_full_disk_says_so_and_runs_again_once_space_is_freed(feats, tmp_path):
    args = ["sweep", str(feats), "--head", "knn", "--grid", "k=1,3", "--jobs", "1", "--no-plots"]
    with small_tmpfs(tmp_path, 4) as disk:
        out = disk / "sweep"
        filler = fill(disk)
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 2 and "No space left on device" in _one_line(result)
        assert not out.exists() or not any(out.iterdir())  # no empty journal.jsonl left behind
        filler.unlink()
        again = runner.invoke(app, [*args, "--out", str(out)])
        assert again.exit_code == 0, again.output
        assert json.loads((out / "sweep.json").read_text())["skipped"] == 0


def test_an_empty_journal_left_by_a_full_disk_is_an_unstarted_sweep(feats, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / JOURNAL).write_bytes(b"")  # what a sweep of headstart <= 0.4 left when the disk filled
    result = S.sweep(feats, "knn", out, grid={"k": [1, 3]}, jobs=1, plots=False)
    assert result.skipped == 0 and len(result.trials) == 2
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / JOURNAL).write_bytes(b'{"kind":"headstart-sweep-jo')  # a header cut short
    assert S.sweep(feats, "knn", torn, grid={"k": [1]}, jobs=1, plots=False).skipped == 0


class _FullDisk:
    """A file opened for writing on a full disk: every write fails with ENOSPC (the file exists)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def test_a_journal_that_cannot_be_written_leaves_nothing_and_runs_again(feats, tmp_path, monkeypatch):
    """ENOSPC injected into every write of the sweep's journal, without root."""

    def full_open(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        return _FullDisk(fh) if any(c in mode for c in "wa") else fh

    monkeypatch.setattr(T, "open", full_open, raising=False)
    out = tmp_path / "sweep"
    args = ["sweep", str(feats), "--head", "knn", "--grid", "k=1,3", "--jobs", "1", "--no-plots", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "No space left on device" in _one_line(result)
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output


def test_a_trial_line_that_hits_a_full_disk_keeps_the_trials_before_it(feats, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    args = ["sweep", str(feats), "--head", "knn", "--grid", "k=1,3,5", "--jobs", "1", "--no-plots", "--out", str(out)]
    real_append = S._append
    lines = {"n": 0}

    def append(path, record):  # the journal's second trial line meets a full disk
        lines["n"] += 1
        if lines["n"] == 2:
            with open(path, "ab") as fh:
                fh.write(b'{"kind":"headstart-trial","he')  # the part that fitted
            raise S.disk_full(path, "journaling a finished trial", S._KEPT)
        real_append(path, record)

    monkeypatch.setattr(S, "_append", append)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith("Error: No space left")
    monkeypatch.undo()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "1 taken from the journal" in again.stdout, again.output


# -- the cache writer and extract (finding 3) -------------------------------------------------------


def _header(dim=256):
    from conftest import TINY_FINGERPRINT

    from headstart.cache import CacheHeader

    return CacheHeader(dim=dim, dtype="float16", fingerprint=TINY_FINGERPRINT, class_names=("a", "b"), root="/x")


def _fill_cache(path, start=0, batches=10_000):
    """Append and commit 50-row batches until the writer says the disk is full; returns (rows, error)."""
    import numpy as np

    from headstart.cache import CacheWriter
    from headstart.errors import DiskFullError

    rng = np.random.default_rng(start)
    n = start
    try:
        with CacheWriter(path, _header()) as w:
            assert w.rows == start
            for _ in range(batches):
                w.append(rng.normal(size=(50, 256)).astype("float16"), [0] * 50, [f"a/{n + j}.jpg" for j in range(50)])
                w.commit()
                n += 50
    except DiskFullError as err:
        return n, err
    return n, None


def test_the_cache_writer_on_a_full_disk_keeps_its_commits_and_resumes(tmp_path):
    from headstart.cache import open_cache

    with small_tmpfs(tmp_path, 24) as disk:
        path = disk / "c.h5"
        rows, err = _fill_cache(path)
        assert err is not None and str(err).startswith("No space left on device") and "\n" not in str(err)
        assert "kept" in str(err) and rows > 1000
        with open_cache(path) as c:  # every row committed before, readable; none of the failed batch
            assert len(c) >= rows and c.paths[rows - 1] == f"a/{rows - 1}.jpg" and c.read().shape == (len(c), 256)
            kept = len(c)
        assert {p.name for p in disk.iterdir()} == {"c.h5"}  # no temporary file, no lock left
        os.system(f"mount -o remount,size=64m {disk}")  # space freed: the same writer goes on
        more, err = _fill_cache(path, start=kept, batches=20)
        assert err is None and more == kept + 1000
        with open_cache(path) as c:
            assert len(c) == kept + 1000 and c.paths[-1] == f"a/{kept + 999}.jpg"


def test_a_write_failing_inside_hdf5_is_one_error_no_crash_and_the_commits_stay(tmp_path):
    """The last resort: space taken between the check and the write (here: no check at all), so HDF5
    itself meets ENOSPC. Run in a child process: the bug was a segmentation fault."""
    import subprocess

    with small_tmpfs(tmp_path, 3) as disk:
        code = (
            "import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]\n"
            "from headstart import disk\n"
            "disk.reserve = lambda fd, n: False\n"
            "disk.check_free = lambda *a: None\n"
            "from test_disk_full import _fill_cache\n"
            "rows, err = _fill_cache(sys.argv[1])\n"
            "print(rows, err)\n"
        )
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-c", code, str(disk / "c.h5"), str(root), str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
        rows = int(proc.stdout.split()[0])
        assert rows > 0 and "No space left on device while writing the feature cache" in proc.stdout
        from headstart.cache import open_cache

        with open_cache(disk / "c.h5") as c:
            assert len(c) == rows and c.paths[-1] == f"a/{rows - 1}.jpg"
        os.system(f"mount -o remount,size=64m {disk}")
        more, err = _fill_cache(disk / "c.h5", start=rows, batches=4)  # recovered, then extended
        assert err is None and more == rows + 200


def test_extract_on_a_disk_that_fills_is_one_line_and_resumes(tmp_path, monkeypatch):
    from conftest import make_images

    from headstart import disk as hs_disk
    from headstart.cache import CacheWriter, open_cache

    images = make_images(tmp_path / "images", per_class=12)
    args = ["extract", str(images), "--backbone", "tiny", "--weights", "none", "--batch-size", "4", "-q"]
    args += ["--commit-seconds", "0"]
    real_append = CacheWriter.append
    with small_tmpfs(tmp_path, 24) as disk:
        out = disk / "cache.h5"
        calls = {"n": 0}

        def append(self, *a, **k):  # the disk fills after two batches (another program's file), and
            calls["n"] += 1  # the next batch needs more than the room the writer had reserved
            if calls["n"] == 3:
                calls["filler"] = fill(disk)
                monkeypatch.setattr(hs_disk, "RESERVE_BYTES", 1 << 40)
            return real_append(self, *a, **k)

        monkeypatch.setattr(CacheWriter, "append", append)
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert _one_line(result).startswith("Error: No space left on device")
        with open_cache(out) as c:
            assert len(c) == 8  # the two batches committed before the disk filled
        monkeypatch.undo()
        calls["filler"].unlink()
        again = runner.invoke(app, [*args, "--out", str(out)])
        assert again.exit_code == 0, again.output
        with open_cache(out) as c:
            assert len(c) == 24 and c.complete


# -- merge --copy (finding 4) ------------------------------------------------------------------------


def _shards(folder, rows=6000, count=2):
    """``count`` complete shard caches of ``rows`` rows of 256 float16 features each (3 MiB a shard)."""
    import numpy as np

    from headstart.cache import CacheWriter
    from headstart.cache.shards import Shard

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        header = _header()
        header = type(header)(**{**header.__dict__, "shard": Shard(i, count).to_json()})
        path = folder / f"part-{i}.h5"
        with CacheWriter(path, header) as w:
            w.append(
                rng.normal(size=(rows, 256)).astype("float16"), [i % 2] * rows, [f"s{i}/{j}.jpg" for j in range(rows)]
            )
            w.close(complete=True)
        out.append(path)
    return out


def _merge_in_child(out, shards, *, no_room_check=False):
    """``headstart merge --copy`` in a child process (the bug was a segmentation fault)."""
    import subprocess

    code = "import sys\n"
    if no_room_check:  # the last resort: HDF5 itself meets ENOSPC
        code += "from headstart import disk\ndisk.reserve = lambda fd, n: False\ndisk.check_free = lambda *a: None\n"
    code += "from headstart.cli import app\napp(sys.argv[1:], prog_name='headstart')\n"
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-c", code, "merge", *map(str, shards), "--copy", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


@pytest.mark.parametrize("no_room_check", [False, True], ids=["checked-first", "hdf5-meets-enospc"])
def test_merge_copy_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, no_room_check):
    shards = _shards(tmp_path)
    with small_tmpfs(tmp_path, 5) as disk:
        proc = _merge_in_child(disk / "m.h5", shards, no_room_check=no_room_check)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: No space left on device"), proc.stderr[-3000:]
        assert list(disk.iterdir()) == []  # no m.h5, no m.h5.merge.tmp, no lock
        os.system(f"mount -o remount,size=32m {disk}")
        proc = _merge_in_child(disk / "m.h5", shards)
        assert proc.returncode == 0, proc.stderr[-3000:]
        from headstart.cache import open_cache

        with open_cache(disk / "m.h5") as c:
            assert len(c) == 12000 and c.complete


def test_a_new_cache_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    from headstart.cache import CacheWriter
    from headstart.errors import DiskFullError

    with small_tmpfs(tmp_path, 3) as disk:
        filler = fill(disk)
        with pytest.raises(DiskFullError, match="^No space left on device") as err:
            with CacheWriter(disk / "c.h5", _header()):
                pass
        assert "\n" not in str(err.value) and {p.name for p in disk.iterdir()} == {filler.name}
