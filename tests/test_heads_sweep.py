"""Tests of headstart.heads.sweep: grid and random search, validation-only scoring, resume, folder safety."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import HeadError, RunBusyError, RunError
from headstart.heads import sweep as S
from headstart.heads import sweep_space as space
from headstart.heads.run_reader import read_run
from headstart.heads.rundir import JOURNAL

sys.path.insert(0, str(Path(__file__).parent))
from heads_fixtures import features, write_cache  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    X, y = features(sep=0.25)
    return write_cache(tmp_path_factory.mktemp("sweep") / "feats.h5", X, y)


@pytest.fixture(scope="module")
def logreg_sweep(cache):
    return S.sweep(cache, "logreg", cache.parent / "sweep-logreg", grid={"C": [0.001, 0.01, 0.1, 1.0]}, jobs=1)


def test_grid_sweep_end_to_end(logreg_sweep):
    out = logreg_sweep.out
    assert {p.name for p in out.iterdir()} == {"sweep.json", "journal.jsonl", "trials.csv", "sweep-C.png", "best"}
    data = json.loads((out / "sweep.json").read_text())
    assert data["kind"] == "headstart-sweep" and data["search"]["mode"] == "grid"
    assert sorted(t["params"]["C"] for t in data["trials"]) == [0.001, 0.01, 0.1, 1.0]
    assert [t["rank"] for t in data["trials"]] == [1, 2, 3, 4]
    accs = [(t["val"]["accuracy"], -t["val"]["log_loss"]) for t in data["trials"]]
    assert accs == sorted(accs, reverse=True)
    assert all("test" not in t for t in data["trials"])  # trials know the validation split only
    info, head = read_run(out / "best")  # the best trial is a normal, valid run folder
    assert info["params"]["C"] == data["best"]["params"]["C"] == data["trials"][0]["params"]["C"]
    assert info["sweep"]["of"] == 4 and data["best"]["test"]["accuracy"] > 0.8
    assert len((out / "trials.csv").read_text().splitlines()) == 5


def test_the_test_split_is_read_once_by_the_best_trial_after_every_trial(cache, tmp_path, monkeypatch):
    reads = []

    class Counting:
        def __init__(self, source, journal):
            self._s, self._journal = source, journal
            self.labels, self.n_features = source.labels, source.n_features
            self.blocks, self.shuffle_window = source.blocks, source.shuffle_window

        def __len__(self):
            return len(self._s)

        def read_block(self, b):
            reads.append(len(self._journal.read_text().splitlines()) - 1)  # trials finished at this read
            return self._s.read_block(b)

        def gather(self, positions):
            reads.append("gather")
            return self._s.gather(positions)

    real = S.prepare
    out = tmp_path / "sw"

    def spying(cache, spec, stream):
        data = real(cache, spec, stream)
        data.sources["test"] = Counting(data.sources["test"], out / JOURNAL)
        return data

    monkeypatch.setattr(S, "prepare", spying)
    S.sweep(cache, "knn", out, grid={"k": [1, 3, 5, 9]}, jobs=1, plots=False)
    assert reads and all(r == 4 for r in reads)  # the first read came after all 4 trials had finished
    from headstart.cache import open_cache
    from headstart.heads.split import SplitSpec

    with open_cache(cache) as c:
        blocks = len(real(c, SplitSpec(), None).sources["test"].blocks)
    assert len(reads) == blocks  # one pass over the test rows: each block read once, no gather
    assert json.loads((out / "sweep.json").read_text())["best"]["test"]["n"] > 0


def test_rerun_skips_finished_trials_and_adds_new_ones(logreg_sweep, cache):
    again = S.sweep(cache, "logreg", logreg_sweep.out, grid={"C": [0.001, 0.01, 0.1, 1.0, 10.0]}, jobs=1, plots=False)
    assert again.skipped == 4 and len(again.trials) == 5
    lines = (logreg_sweep.out / JOURNAL).read_text().splitlines()
    assert len(lines) == 1 + 5  # the header and each trial once


def test_rank_by_log_loss(logreg_sweep, cache):
    again = S.sweep(
        cache, "logreg", logreg_sweep.out, grid={"C": [0.001, 0.01, 0.1, 1.0]}, jobs=1, plots=False, rank_by="log_loss"
    )
    losses = [t["val"]["log_loss"] for t in again.trials]
    assert again.skipped == 4 and losses == sorted(losses)


def test_other_split_or_calibration_does_not_reuse_trials(cache, tmp_path):
    from headstart.heads.split import SplitSpec

    out = tmp_path / "sw"
    S.sweep(cache, "knn", out, grid={"k": [1, 3]}, jobs=1, plots=False)
    other = S.sweep(cache, "knn", out, grid={"k": [1, 3]}, jobs=1, plots=False, split=SplitSpec(seed=1))
    assert other.skipped == 0
    same = S.sweep(cache, "knn", out, grid={"k": [1, 3]}, jobs=1, plots=False, split=SplitSpec(seed=1))
    assert same.skipped == 2


def test_resume_after_the_sweep_process_is_killed(cache, tmp_path):
    out = tmp_path / "sw"
    grid = "C=" + ",".join(str(c) for c in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0))
    cmd = [
        sys.executable,
        "-c",
        "from headstart.cli import run; run()",
        "sweep",
        str(cache),
        "--head",
        "svm",
        "--grid",
        grid,
        "--jobs",
        "1",
        "--no-plots",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            journal = out / JOURNAL
            if journal.exists() and len(journal.read_bytes().splitlines()) >= 3:  # the header and two trials
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len((out / JOURNAL).read_bytes().splitlines()) - 1
    assert 2 <= done < 10 and {p.name for p in out.iterdir()} == {JOURNAL}  # an unfinished sweep: the journal
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{done} taken from the journal" in result.stdout
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["trials"]) == 10 and data["skipped"] == done


def test_a_torn_last_journal_line_is_skipped_and_ended(cache, tmp_path):
    out = tmp_path / "sw"
    S.sweep(cache, "knn", out, grid={"k": [1, 3]}, jobs=1, plots=False)
    with open(out / JOURNAL, "ab") as fh:
        fh.write(b'{"kind":"headstart-trial","head":"knn","pa')  # a kill mid-write
    again = S.sweep(cache, "knn", out, grid={"k": [1, 3, 5]}, jobs=1, plots=False)
    assert again.skipped == 2 and len(again.trials) == 3
    lines = (out / JOURNAL).read_bytes().splitlines()
    assert json.loads(lines[-1])["params"] == {"k": 5}


def test_a_folder_with_other_files_is_refused_and_kept(cache, tmp_path, logreg_sweep):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds files headstart did not write"):
        S.sweep(cache, "knn", out, grid={"k": [1]}, jobs=1)
    assert (out / "notes.txt").read_text() == "mine"
    (logreg_sweep.out / "extra.txt").write_text("x")  # a finished sweep that gained a file
    try:
        with pytest.raises(RunError, match="holds files headstart did not write"):
            S.sweep(cache, "logreg", logreg_sweep.out, grid={"C": [1.0]}, jobs=1)
    finally:
        (logreg_sweep.out / "extra.txt").unlink()
    run_folder = tmp_path / "run"
    from headstart.heads import training

    training.train(cache, "knn", run_folder, plots=False)
    with pytest.raises(RunError, match="earlier headstart sweep"):  # a run is not a sweep
        S.sweep(cache, "knn", run_folder, grid={"k": [1]}, jobs=1)


def test_a_second_sweep_on_the_same_folder_is_refused(cache, tmp_path):
    from headstart.heads.rundir import busy_error
    from headstart.locking import exclusive_lock, lock_path_for

    out = tmp_path / "sw"
    with exclusive_lock(lock_path_for(out), busy_error(out)):
        with pytest.raises(RunBusyError, match="Another headstart process is writing"):
            S.sweep(cache, "knn", out, grid={"k": [1]}, jobs=1)


def test_parsing_values_to_each_options_type():
    assert space.parse_grid("mlp", ["hidden_units=128,256", "dropout=0.2,0.5", "learning_rate=1e-3"]) == {
        "hidden_units": [128, 256],
        "dropout": [0.2, 0.5],
        "learning_rate": [0.001],
    }
    assert space.parse_grid("logreg", ["class_weight=none,balanced", "C=1"]) == {
        "class_weight": [None, "balanced"],
        "C": [1.0],
    }
    assert space.parse_ranges("mlp", ["learning_rate=1e-4:1e-2:log"]) == {"learning_rate": (1e-4, 1e-2, True)}
    for args, message in [
        (["hidden_units=1.5"], "hidden_units values as integers. Received: '1.5'"),
        (["units=3"], "takes no option 'units'. It takes: batch_size"),
        (["dropout"], "Expected --grid NAME="),
        (["Cs=1,2"], None),
        (["class_weight=some"], "none or balanced"),
    ]:
        head = "logreg" if args[0].startswith(("Cs", "class")) else "mlp"
        with pytest.raises(HeadError, match=message):
            space.parse_grid(head, args)
    with pytest.raises(HeadError, match="LOW < HIGH"):
        space.parse_ranges("mlp", ["dropout=0.5:0.1"])


def test_random_settings_are_distinct_and_in_range():
    settings = space.random_settings(
        "mlp",
        {"dropout": [0.1, 0.3]},
        {"hidden_units": (32, 512, True), "learning_rate": (1e-4, 1e-2, True)},
        12,
        seed=0,
    )
    assert len(settings) == 12 and len({json.dumps(s, sort_keys=True) for s in settings}) == 12
    for s in settings:
        assert isinstance(s["hidden_units"], int) and 32 <= s["hidden_units"] <= 512
        assert 1e-4 <= s["learning_rate"] <= 1e-2 and s["dropout"] in (0.1, 0.3)
    assert space.random_settings("knn", {}, {}, 5, seed=0) == space.random_settings("knn", {}, {}, 5, seed=0)


def test_random_search_end_to_end(cache, tmp_path):
    result = S.sweep(cache, "svm", tmp_path / "sw", trials=3, jobs=1, plots=False)
    assert len(result.trials) == 3 and all(set(t["params"]) == {"C"} for t in result.trials)
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["search"]["mode"] == "random"


def test_bad_searches_fail_before_the_cache_is_read(tmp_path):
    missing = tmp_path / "none.h5"
    for kwargs, message in [
        ({}, "at least one --grid"),
        ({"ranges": {"C": (0.1, 1.0, False)}}, "--trials N with --range"),
        ({"grid": {"C": [-1.0]}}, "C to be a number > 0"),
        ({"grid": {"C": [1.0]}, "halving": True}, "Keras head"),
        ({"grid": {"C": [1.0]}, "params": {"C": 2.0}}, "either fixed or searched"),
        ({"trials": 0}, "--trials between 1"),
    ]:
        with pytest.raises(HeadError, match=message):
            S.sweep(missing, "logreg", tmp_path / "sw", **kwargs)


def test_successive_halving_keeps_the_best_third_for_more_epochs():
    calls = []

    def fake_rung(trials, total):
        calls.append([(t.params["epochs"], t.params["hidden_units"]) for t in trials])
        for t in trials:  # a bigger layer scores better
            t.record = {
                "params": t.params,
                "rung": t.rung,
                "val": {"accuracy": t.params["hidden_units"] / 1000, "log_loss": 1.0},
            }

    settings = [{"hidden_units": h} for h in range(1, 10)]
    kept = S._halving(settings, {"epochs": 90}, "mlp", 3, fake_rung)
    assert [len(c) for c in calls] == [9, 3, 1]
    assert [c[0][0] for c in calls] == [10, 30, 90]
    assert calls[1] and {h for _, h in calls[1]} == {7, 8, 9} and calls[2] == [(90, 9)]
    assert len(kept) == 9 and max(kept, key=lambda t: (t.rung, t.record["val"]["accuracy"])).params["epochs"] == 90


@pytest.mark.slow
def test_mlp_sweep_with_halving_in_worker_processes(cache, tmp_path):
    result = S.sweep(
        cache,
        "mlp",
        tmp_path / "sw",
        grid={"hidden_units": [8, 32], "learning_rate": [0.01, 0.001]},
        params={"epochs": 6, "batch_size": 32},
        halving=True,
        eta=2,
        jobs=2,
    )
    assert len(result.trials) == 4 and result.trials[0]["params"]["epochs"] == 6
    # Blobs at sep=0.25 (three classes): 0.80 measured, 0.798 once under load (the worker processes'
    # thread timing moves the last digit). The bar tells learning from chance (1/3), not a score.
    assert result.best.metrics["test"]["accuracy"] > 0.7


def test_ctrl_c_keeps_finished_trials_stops_the_workers_and_says_so(cache, tmp_path):
    import psutil

    out = tmp_path / "sw"
    # 400 trials (0.05-0.1 s each), interrupted after the first: far from done when the signal comes.
    values = [float(f"{c:.4g}") for c in np.logspace(-4, 2, 400)]
    grid = "C=" + ",".join(map(str, values))
    cmd = [
        sys.executable,
        "-c",
        "from headstart.cli import run; run()",
        "sweep",
        str(cache),
        "--head",
        "svm",
        "--grid",
        grid,
        "--jobs",
        "2",
        "--no-plots",
        "--out",
        str(out),
    ]
    # A child inherits an ignored SIGINT through exec, and Python then installs no KeyboardInterrupt
    # handler: in the full suite something before this test left SIGINT ignored in the pytest
    # process, the sweep never saw the signal and ran all its trials (exit 0, seen three times).
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default: start it that way.
    inherited = signal.getsignal(signal.SIGINT)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            journal = out / JOURNAL
            if journal.exists() and len(journal.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len((out / JOURNAL).read_bytes().splitlines()) - 1
    assert proc.returncode == 130, (
        f"exit {proc.returncode} after {done} of 400 trials (SIGINT here: {inherited}): {stderr[-300:]}"
    )
    assert "Finished trials are kept" in stderr and "Traceback" not in stderr
    psutil.wait_procs(workers, timeout=10)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    done = len((out / JOURNAL).read_bytes().splitlines()) - 1
    assert done >= 1
    again = S.sweep(cache, "svm", out, grid={"C": values[:2]}, jobs=1, plots=False)  # the first two were running
    assert again.skipped >= 1


def test_workers_die_with_a_killed_sweep(cache, tmp_path):
    import psutil

    out = tmp_path / "sw"
    grid = "C=" + ",".join(str(c) for c in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0))
    cmd = [
        sys.executable,
        "-c",
        "from headstart.cli import run; run()",
        "sweep",
        str(cache),
        "--head",
        "svm",
        "--grid",
        grid,
        "--jobs",
        "2",
        "--no-plots",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / JOURNAL).exists() and len((out / JOURNAL).read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.01)
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    again = S.sweep(cache, "svm", out, grid={"C": [1e-4, 3e-4]}, jobs=1, plots=False)  # the lock is free
    assert again.skipped >= 1


def test_a_journal_of_another_cache_with_the_same_settings_is_not_reused(tmp_path, caplog):
    """issue 21, finding 2: same extraction settings, same row count, other pictures: other trials."""
    Xa, y = features(n=300, sep=3.0)  # a.h5 separates perfectly
    Xb = np.random.default_rng(5).normal(5, 1, Xa.shape).astype(np.float32)  # b.h5: noise
    a = write_cache(tmp_path / "a.h5", Xa, y)
    b = write_cache(tmp_path / "b.h5", Xb, y)
    grid = {"k": [1, 3, 5]}
    fresh = S.sweep(b, "knn", tmp_path / "fresh", grid=grid, jobs=1, plots=False)
    out = tmp_path / "sw"
    S.sweep(a, "knn", out, grid=grid, jobs=1, plots=False)
    with caplog.at_level("WARNING"):
        again = S.sweep(b, "knn", out, grid=grid, jobs=1, plots=False)
    assert again.skipped == 0
    score = {r["params"]["k"]: r["val"]["accuracy"] for r in again.trials}
    assert score == {r["params"]["k"]: r["val"]["accuracy"] for r in fresh.trials}
    assert any("trials of another cache" in r.message and "discarded" in r.message for r in caplog.records)
    header = json.loads((out / JOURNAL).read_bytes().splitlines()[0])
    assert header["cache"] == str(b.resolve()) and header["rows"] == 300
    assert len((out / JOURNAL).read_bytes().splitlines()) == 1 + 3  # a's trials are gone
    assert S.sweep(b, "knn", out, grid=grid, jobs=1, plots=False).skipped == 3  # b's own are reused
