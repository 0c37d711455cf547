"""Tests of headstart.cli.sweep: `sweep` output, exit codes and messages (`runs`: see test_heads_catalog)."""

import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from headstart.cli.sweep import register

sys.path.insert(0, str(Path(__file__).parent))
from heads_fixtures import features, write_cache  # noqa: E402

app = typer.Typer()
register(app)
runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cli-sweep") / "feats.h5", *features(sep=0.25))


def test_sweep_prints_a_ranked_table_and_the_best_run(cache, tmp_path):
    out = tmp_path / "sw"
    result = runner.invoke(
        app,
        ["sweep", str(cache), "--head", "logreg", "--grid", "C=0.01,1", "--jobs", "1", "--no-plots", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "logreg sweep on feats.h5: 2 trials" in result.stdout and "val accuracy" in result.stdout
    assert "on the test split: accuracy" in result.stdout and str(out / "best") in result.stdout
    assert "[2/2] C=" in result.stderr
    assert json.loads((out / "sweep.json").read_text())["search"]["grid"] == {"C": [0.01, 1.0]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "C=abc"], "Expected C values as numbers. Received: 'abc'."),
        (["--grid", "units=1"], "Head 'logreg' takes no option 'units'"),
        (["--range", "C=1:0.1", "--trials", "3"], "Expected LOW < HIGH"),
        ([], "Expected at least one --grid NAME=V1,V2 (or --trials N)"),
        (["--grid", "C=1", "--epochs", "3"], "--epochs does not apply to the logreg head"),
        (["--grid", "C=1", "--calibrate", "platt"], "Expected --calibrate among none, temperature"),
        (["--grid", "C=1", "--halving"], "Expected a Keras head (softmax, mlp) for --halving"),
        (["--grid", "C=1", "--rank-by", "f1"], "Expected --rank-by among accuracy, log_loss. Received: 'f1'."),
    ],
)
def test_bad_sweeps_are_one_line_and_exit_2(cache, tmp_path, args, message):
    result = runner.invoke(app, ["sweep", str(cache), "--head", "logreg", "--out", str(tmp_path / "sw"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not (tmp_path / "sw").exists()


def test_every_command_has_help_with_an_example():
    for name in ("sweep", "runs"):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Example: headstart " + name in " ".join(result.stdout.split())
