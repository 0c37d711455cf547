"""Tests of headstart.heads.rundir: run folders are written under a lock, swapped in whole, read back checked.

Real subprocesses where it matters: a writer killed with SIGKILL at many moments, two writers at once.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from heads_fixtures import features, write_cache

from headstart.errors import RunBusyError, RunError
from headstart.heads import evaluation, training
from headstart.heads.run_reader import read_run
from headstart.heads.rundir import RUN_KIND, is_comparison, is_run, result_writer
from headstart.locking import exclusive_lock, lock_path_for


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    X, y = features(n=300)
    return write_cache(tmp_path_factory.mktemp("rundir") / "feats.h5", X, y)


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory):
    return training.train(cache, "logreg", tmp_path_factory.mktemp("r") / "run", plots=False).run_dir


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- what counts as ours -----------------------------------------------------------------------


def test_a_written_run_is_recognised_by_its_manifest_not_its_name(run, tmp_path):
    assert is_run(run)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "run.json").write_text("{}")
    (fake / "thesis.tex").write_text("years of work")
    assert not is_run(fake)
    with pytest.raises(RunError, match="holds files headstart did not write"):
        training.train(_cache_of(run), "logreg", fake, plots=False)
    assert (fake / "thesis.tex").read_text() == "years of work"


def _cache_of(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["cache"]["path"]


def test_a_run_with_a_foreign_file_added_is_refused_and_kept(run, tmp_path):
    mine = _copy(run, tmp_path / "run")
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="Nothing was deleted"):
        training.train(_cache_of(run), "logreg", mine, plots=False)
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_foreign_sub_folder_is_refused(run, tmp_path):
    mine = _copy(run, tmp_path / "run")
    (mine / "data").mkdir()
    (mine / "data" / "x.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RunError, match="holds files headstart did not write"):
        training.train(_cache_of(run), "logreg", mine, plots=False)
    assert (mine / "data" / "x.jpg").exists()


def test_out_as_a_symlink_or_a_file_is_refused(run, tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(RunError, match="a link"):
        training.train(_cache_of(run), "logreg", tmp_path / "link", plots=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="a file"):
        training.train(_cache_of(run), "logreg", tmp_path / "file", plots=False)


def test_a_comparison_is_recognised_and_a_rerun_replaces_it(cache, tmp_path):
    out = tmp_path / "cmp"
    training.compare(cache, out, heads=["logreg"], plots=False)
    assert is_comparison(out) and not is_run(out)
    training.compare(cache, out, heads=["logreg"], plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]
    # a comparison is not a run: train refuses to overwrite it, and the reverse
    with pytest.raises(RunError, match="earlier headstart run"):
        training.train(cache, "logreg", out, plots=False)


def test_retraining_one_head_of_a_comparison_keeps_the_comparison_replaceable(cache, tmp_path):
    out = tmp_path / "cmp"
    training.compare(cache, out, heads=["logreg"], plots=False)
    training.train(cache, "logreg", out / "logreg", plots=False)
    assert is_comparison(out)


# -- one writer at a time ----------------------------------------------------------------------


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(cache, tmp_path):
    out = tmp_path / "run"
    with exclusive_lock(lock_path_for(out), RuntimeError("held")):
        with pytest.raises(RunBusyError, match="Another headstart process is writing"):
            training.train(cache, "logreg", out, plots=False)
    assert not out.exists()
    training.train(cache, "logreg", out, plots=False)  # free again once released
    assert is_run(out)


def _headstart(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", "from headstart.cli import app; app()", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_two_processes_training_into_one_folder_never_delete_each_others_work(cache, tmp_path):
    out = tmp_path / "run"
    procs = [_headstart("train", cache, "--head", "logreg", "--out", out, "--no-plots") for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0, results
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            assert "Another headstart process is writing" in err and "Traceback" not in err
    assert is_run(out)
    read_run(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_a_writer_killed_at_any_moment_leaves_the_old_run_or_the_new_one(cache, tmp_path):
    """SIGKILL a `train` at spread-out moments of its life; the folder is always one whole run."""
    out = tmp_path / "run"
    training.train(cache, "logreg", out, plots=False)
    before = json.loads((out / "run.json").read_text())["created"]
    t0 = time.perf_counter()
    p = _headstart("train", cache, "--head", "logreg", "--out", out, "--seed", "1")
    assert p.wait(timeout=120) == 0
    whole = time.perf_counter() - t0
    seeds = set()
    for i in range(12):
        p = _headstart("train", cache, "--head", "logreg", "--out", out, "--seed", str(i + 2))
        time.sleep(whole * (0.3 + 0.7 * i / 11))
        p.send_signal(signal.SIGKILL)
        p.wait()
        info, _ = read_run(out)  # never half a run
        seeds.add(info["split"]["seed"])
    assert before and len(seeds) >= 2  # some kills came after the swap, some before
    training.train(cache, "logreg", out, plots=False)  # leftovers of the killed writers are cleaned
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["run"]


def test_a_failure_inside_the_writer_leaves_the_old_run_untouched(run, tmp_path):
    mine = _copy(run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    with pytest.raises(ZeroDivisionError):
        with result_writer(mine, RUN_KIND) as tmp:
            (tmp / "half.txt").write_text("half")
            1 / 0
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- reading is validation -----------------------------------------------------------------------


def test_a_pickled_head_from_0_1_is_refused_and_never_unpickled(run, tmp_path):
    mine = _copy(run, tmp_path / "run")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (mine / "head.joblib").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(RunError, match="no longer read. Train the head again"):
        evaluation.evaluate(mine)
    assert not marker.exists()


@pytest.mark.parametrize("doors", ["headers and np.load", "np.load alone"])
def test_an_object_array_in_head_npz_is_refused_without_unpickling(run, tmp_path, monkeypatch, doors):
    """The manifest is re-sealed, so only the loading stands in the way: the members' headers are read
    first (an object dtype is refused there), then np.load(allow_pickle=False), each tried alone."""
    from headstart.heads import sources

    mine = _copy(run, tmp_path / "run")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    np.savez(mine / "head.npz", coef=np.array([Payload()], dtype=object), intercept=np.zeros(3))
    _reseal(mine, "head.npz")
    if doors == "np.load alone":
        monkeypatch.setattr(sources, "_check_members", lambda *a: None)
        refused = r"head\.npz\. Received: a damaged file \(Object arrays cannot be loaded"
    else:
        refused = r"Expected coef in .*head\.npz as floats of shape \(3, 64\)\. Received: object of shape \(1,\)"
    with pytest.raises(RunError, match=refused):
        evaluation.evaluate(mine)
    assert not marker.exists()


def test_a_run_from_0_1_is_refused_with_the_way_out(run, tmp_path):
    mine = _copy(run, tmp_path / "run")
    info = json.loads((mine / "run.json").read_text())
    info["format"] = 1
    del info["kind"]
    (mine / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="made by headstart 0.1.*headstart train CACHE"):
        read_run(mine)


def test_a_changed_file_is_named(run, tmp_path):
    mine = _copy(run, tmp_path / "run")
    (mine / "metrics.json").write_text("{}")
    with pytest.raises(RunError, match="metrics.json as headstart wrote it"):
        read_run(mine)


def test_versions_of_another_major_are_warned_about(run, tmp_path, caplog):
    from headstart.heads.run_reader import warn_versions

    info = json.loads((run / "run.json").read_text())
    info["versions"] = {**info["versions"], "keras": "2.15.0", "scikit-learn": "0.24.2"}
    with caplog.at_level("WARNING"):
        said = warn_versions(info, run)
    assert len(said) == 2 and "keras 2.15.0" in said[0]
    assert "keras 2.15.0" in caplog.text


def _npy_header_only(shape, descr="<f4") -> bytes:
    """An .npy member that declares ``shape`` but holds only a few bytes of data."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def _forge_npz(folder: Path, name: str, members: dict[str, bytes]) -> None:
    """Write ``folder/name`` as a zip of raw members and seal it into run.json as headstart would."""
    import zipfile

    with zipfile.ZipFile(folder / name, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    _reseal(folder, name)


def _reseal(folder: Path, *names: str) -> None:
    """Record the files' new SHA-256 in run.json, as a forger would."""
    from headstart.heads.rundir import file_sha256

    info = json.loads((folder / "run.json").read_text())
    for name in names:
        info["files"][name] = file_sha256(folder / name)
    (folder / "run.json").write_text(json.dumps(info))


@pytest.mark.parametrize("name", ["head.npz", "standardization.npz"])
def test_a_huge_declared_shape_in_an_npz_is_refused_before_allocating(run, tmp_path, name):
    import io
    import resource

    from typer.testing import CliRunner

    from headstart.cli import app

    mine = _copy(run, tmp_path / "run")
    with np.load(mine / name) as z:
        members = {}
        for key in z.files:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, z[key])
            members[f"{key}.npy"] = buf.getvalue()
    first = sorted(members)[0]
    members[first] = _npy_header_only((1 << 25, 1 << 25))  # 4 PiB of float32
    _forge_npz(mine, name, members)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, hard))  # a 1 PiB calloc fails at once either way
    try:
        res = CliRunner().invoke(app, ["evaluate", str(mine)])
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert res.exit_code == 2, res.output
    assert "shape" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_head_json_that_declares_more_rows_than_head_npz_holds_is_refused(cache, tmp_path):
    mine = training.train(cache, "knn", tmp_path / "run", plots=False).run_dir
    head = json.loads((mine / "head.json").read_text())
    n = 1 << 36
    head["fitted"]["n_rows_"] = n
    (mine / "head.json").write_text(json.dumps(head))
    with np.load(mine / "head.npz") as z:
        dim = z["rows"].shape[1]
        rows_dtype = z["rows"].dtype.str
    members = {"rows.npy": _npy_header_only((n, dim), rows_dtype), "labels.npy": _npy_header_only((n,))}
    _forge_npz(mine, "head.npz", members)
    _reseal(mine, "head.json")
    with pytest.raises(RunError, match="to hold the"):
        read_run(mine)
