"""A full disk (issue 21, findings 3, 4, 5): one line, exit 2, what was committed kept and resumable.

Run for real on a small tmpfs (root only; CI runs as root) and, where cheap, by injecting ENOSPC."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headstart.cli import app
from headstart.heads import sweep as S
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

    monkeypatch.setattr(S, "open", full_open, raising=False)
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
