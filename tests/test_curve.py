"""headstart curve: learning curves from a cache; the last point is `train`; resumable; safe --out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from heads_fixtures import features, write_cache
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import HeadError, RunError
from headstart.heads import training
from headstart.heads.curve import JOURNAL, draw_rows, learning_curve, sizes_for

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    X, y = features(n=300, dim=32, classes=3, seed=1)
    return write_cache(tmp_path_factory.mktemp("curve") / "c.h5", X, y)


def test_sizes_double_until_the_smallest_class_then_all():
    assert sizes_for([70, 9, 30]) == [1, 2, 4, 8, "all"]
    assert sizes_for([70, 8, 30]) == [1, 2, 4, "all"]
    assert sizes_for([500, 500], largest=16) == [1, 2, 4, 8, 16, "all"]


def test_draws_are_class_balanced_and_repeatable():
    labels = np.array([0] * 10 + [1] * 20 + [2] * 5)
    rows = draw_rows(labels, 4, seed=3)
    assert np.bincount(labels[rows]).tolist() == [4, 4, 4] and len(set(rows)) == 12
    assert (rows == draw_rows(labels, 4, seed=3)).all() and not (rows == draw_rows(labels, 4, seed=4)).all()


def test_the_last_point_equals_a_normal_train_of_the_same_head(cache, tmp_path):
    result = learning_curve([cache], "logreg", tmp_path / "curve", draws=3, plots=False)
    run = training.train(cache, "logreg", tmp_path / "run", params={"random_state": 0}, plots=False)
    last = result.rows[-1]
    assert last["per_class"] == "all" and last["draws"] == 1
    assert last["n_train"] == run.counts["train"]
    assert last["accuracy_mean"] == pytest.approx(run.metrics["test"]["accuracy"], abs=1e-12)
    assert last["log_loss_mean"] == pytest.approx(run.metrics["test"]["log_loss"], rel=1e-9)
    first = result.rows[0]
    assert first["per_class"] == 1 and first["draws"] == 3 and first["n_train"] == 3
    assert first["accuracy_mean"] < last["accuracy_mean"]


def test_a_killed_curve_resumes_from_its_journal(cache, tmp_path):
    out = tmp_path / "curve"
    full = learning_curve([cache], "logreg", out, draws=2, plots=False)
    lines = (out / JOURNAL).read_text().splitlines()
    # As after a kill: half the points finished, the last line torn mid-write, no curve.json yet.
    (out / JOURNAL).write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[-1][:20])
    (out / "curve.json").unlink()
    fitted = []
    again = learning_curve([cache], "logreg", out, draws=2, plots=False, on_point=lambda r, i, n: fitted.append(r))
    assert again.skipped == len(lines) // 2
    assert again.rows == full.rows
    assert json.loads((out / "curve.json").read_text())["kind"] == "headstart-curve"


def test_another_cache_or_head_never_takes_points_from_the_journal(cache, tmp_path):
    out = tmp_path / "curve"
    learning_curve([cache], "logreg", out, draws=1, plots=False)
    X, y = features(n=300, dim=32, classes=3, seed=2)
    other = write_cache(tmp_path / "other.h5", X, y)
    result = learning_curve([other], "logreg", out, draws=1, plots=False)
    assert result.skipped == 0


def test_out_with_other_files_is_refused_and_kept(cache, tmp_path):
    out = tmp_path / "curve"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds notes.txt"):
        learning_curve([cache], "logreg", out, plots=False)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(HeadError, match="--draws of 1 or more"):
        learning_curve([cache], "logreg", tmp_path / "x", draws=0)


def test_cli_prints_a_table_and_writes_the_plot(cache, tmp_path):
    out = tmp_path / "curve"
    result = runner.invoke(app, ["curve", str(cache), "--out", str(out), "--draws", "2", "--largest", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cache\tper class") and [ln.split("\t")[1] for ln in lines[1:5]] == [
        "1",
        "2",
        "4",
        "all",
    ]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, ["curve", str(cache), "--out", str(out), "--epochs", "3"])
    assert bad.exit_code == 2 and "--epochs does not apply to the logreg head" in bad.stderr


def test_worker_processes_give_the_same_curve(cache, tmp_path):
    """In a fresh process (no TensorFlow loaded), --jobs 2 forks workers; the curve is the same."""
    import subprocess
    import sys

    serial = learning_curve([cache], "logreg", tmp_path / "a", draws=2, largest=4, plots=False)
    code = (
        "import concurrent.futures as cf, sys\n"
        "from pathlib import Path\n"
        "from headstart.heads.curve import learning_curve\n"
        "pools = []\n"
        "init = cf.ProcessPoolExecutor.__init__\n"
        "def spy(self, *a, **k):\n"
        "    pools.append(a)\n"
        "    init(self, *a, **k)\n"
        "cf.ProcessPoolExecutor.__init__ = spy\n"
        "learning_curve([Path(sys.argv[1])], 'logreg', Path(sys.argv[2]), draws=2, largest=4, plots=False, jobs=2)\n"
        "assert 'tensorflow' not in sys.modules and pools == [(2,)], pools\n"
    )
    subprocess.run([sys.executable, "-c", code, str(cache), str(tmp_path / "b")], check=True, timeout=300)
    parallel = json.loads((tmp_path / "b" / "curve.json").read_text())["summary"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "cache"} for r in rows]  # noqa: E731
    assert strip(parallel) == strip(serial.rows)
