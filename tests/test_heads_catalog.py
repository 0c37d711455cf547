"""Tests of headstart.heads.catalog and `headstart runs`: every run below a folder, broken ones as notes."""

import json
import os
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from headstart.cli.sweep import register
from headstart.errors import RunError
from headstart.heads import catalog, training
from headstart.heads import sweep as S

sys.path.insert(0, str(Path(__file__).parent))
from heads_fixtures import FP, features, write_cache  # noqa: E402

app = typer.Typer()
register(app)
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/ with runs of two caches (a train, a compare, a sweep, an unfinished sweep) and broken folders."""
    base = tmp_path_factory.mktemp("catalog")
    X, y = features(sep=0.25)
    a = write_cache(base / "a.h5", X, y)
    b = write_cache(
        base / "b.h5", *features(seed=5, sep=0.25), fp={**FP, "layer": "pool"}
    )  # another cache: another layer of the tiny backbone
    top = base / "runs"
    training.train(a, "logreg", top / "logreg", plots=False)
    training.train(a, "knn", top / "knn-cal", plots=False, calibrate="temperature")
    training.compare(b, top / "cmp", heads=["logreg", "svm"], plots=False)
    S.sweep(a, "knn", top / "sweeps" / "knn", grid={"k": [1, 5]}, jobs=1, plots=False)
    unfinished = top / "sweeps" / "unfinished"
    S.sweep(a, "svm", unfinished, grid={"C": [0.01]}, jobs=1, plots=False)
    for p in unfinished.iterdir():  # keep the journal only, as a killed sweep leaves it
        if p.name != "journal.jsonl":
            import shutil

            shutil.rmtree(p) if p.is_dir() else p.unlink()
    broken = top / "broken"
    for name, content in [
        ("torn", b'{"kind": "headstart-run", "form'),
        ("random", os.urandom(200)),
        ("list", b"[1, 2]"),
        ("wrong-head", None),
    ]:
        (broken / name).mkdir(parents=True)
        if content is None:
            info = json.loads((top / "logreg" / "run.json").read_text())
            content = json.dumps({**info, "head": "os.system"}).encode()
        (broken / name / "run.json").write_bytes(content)
    (broken / "bad-metrics").mkdir()
    (broken / "bad-metrics" / "run.json").write_text((top / "logreg" / "run.json").read_text())
    (broken / "bad-metrics" / "metrics.json").write_text("{not json")
    os.symlink("..", broken / "loop")  # a symlink loop: never followed
    os.symlink(top / "logreg", top / "link-to-logreg")
    return top


def test_every_run_is_listed_grouped_by_cache(runs):
    cat = catalog.find_runs(runs)
    groups = cat.groups()
    assert len(groups) == 2
    by_cache = {Path(g["cache"]).name: g["rows"] for g in groups}
    assert sorted(r["path"] for r in by_cache["a.h5"]) == ["knn-cal", "logreg", "sweeps/knn/best", "sweeps/unfinished"]
    assert sorted(r["path"] for r in by_cache["b.h5"]) == ["cmp/logreg", "cmp/svm"]
    rows = {r["path"]: r for r in cat.rows}
    assert rows["cmp/svm"]["group"] == "compare cmp" and rows["sweeps/knn/best"]["group"] == "sweep knn, best of 2"
    assert "T=" in rows["knn-cal"]["params"] and rows["knn-cal"]["calibrate"] == "temperature"
    assert rows["sweeps/unfinished"]["kind"] == "sweep (unfinished)" and rows["sweeps/unfinished"]["head"] == "svm"
    for r in by_cache["a.h5"] + by_cache["b.h5"]:
        if r["kind"] != "run":
            continue
        assert 0.5 < r["val_accuracy"] <= 1 and 0.5 < r["test_accuracy"] <= 1 and r["log_loss"] > 0
        assert r["date"] and r["fit_seconds"] is not None


def test_broken_folders_and_links_are_notes(runs):
    notes = {Path(n["path"]).name: n["reason"] for n in catalog.find_runs(runs).notes}
    assert "not valid JSON" in notes["torn"] and "not valid JSON" in notes["random"]
    assert "a JSON object" in notes["list"] and "head among" in notes["wrong-head"]
    assert "not followed" in notes["loop"] and "not followed" in notes["link-to-logreg"]
    assert "metrics.json is not valid JSON" in notes["bad-metrics"]


def test_sorting_and_an_unknown_column():
    rows = [
        {"val_accuracy": 0.5, "fit_seconds": 2.0},
        {"val_accuracy": None, "fit_seconds": 1.0},
        {"val_accuracy": 0.9, "fit_seconds": 3.0},
    ]
    assert [r["val_accuracy"] for r in catalog.sort_rows(rows, "val_accuracy")] == [0.9, 0.5, None]
    assert [r["fit_seconds"] for r in catalog.sort_rows(rows, "fit_seconds")] == [1.0, 2.0, 3.0]
    with pytest.raises(RunError, match="Expected --sort among val_accuracy"):
        catalog.sort_rows(rows, "speed")


def test_runs_command_table_json_and_notes(runs):
    result = runner.invoke(app, ["runs", str(runs)])
    assert result.exit_code == 0, result.output
    assert "cache " in result.stdout and "sweeps/knn/best" in result.stdout and "cmp/svm" in result.stdout
    assert "skipped" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["runs", str(runs), "--json", "--sort", "test_accuracy"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {len(g["rows"]) for g in data["groups"]} == {4, 2} and len(data["notes"]) >= 7
    for g in data["groups"]:
        accs = [r["test_accuracy"] for r in g["rows"] if r["test_accuracy"] is not None]
        assert accs == sorted(accs, reverse=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "/no/such/folder"], "Expected a folder of runs. Received: /no/such/folder (no such folder)"),
        (["runs", ".", "--sort", "speed"], "Expected --sort among"),
    ],
)
def test_runs_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_folder_is_a_note(tmp_path):
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0)
    try:
        notes = catalog.find_runs(tmp_path).notes
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert any("cannot read" in n["reason"] for n in notes)
