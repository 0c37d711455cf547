"""headstart baseline: the notebook's CNN streamed from disk, on the heads' split, written as a run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import make_images
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()
FAST = ["--input-size", "48", "--epochs", "2", "--batch-size", "8", "--no-plots", "--quiet"]


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    root = make_images(tmp_path / "pics", per_class=12, size=(50, 60))
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "truncated.jpg").write_bytes((root / "dog" / "dog.0.jpg").read_bytes()[:200])
    return root


def test_build_cnn_is_the_notebooks():
    from headstart.baseline import build_cnn

    model = build_cnn(224, 2)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 32, 32, 32]
    assert [layer.name for layer in model.layers if "dropout" in layer.name] == [
        "dropout2",
        "dropout4",
        "dropout_dense",
    ]
    assert model.get_layer("dense").units == 256 and model.output_shape == (None, 2)


def test_baseline_writes_a_run_on_the_heads_split(pictures, tmp_path, tiny_config):
    from headstart.extractor.runner import extract
    from headstart.heads import training

    out = tmp_path / "scratch"
    result = runner.invoke(app, ["baseline", str(pictures), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "Trained the scratch CNN" in result.output and "skipped 2 unreadable" in result.output
    assert {"run.json", "metrics.json", "history.csv", "model.keras"} <= {p.name for p in out.iterdir()}
    run = json.loads((out / "run.json").read_text())
    assert run["head"] == "scratch" and run["params"]["input_size"] == 48
    assert {f["path"] for f in run["failed"]} == {"cat/empty.jpg", "dog/truncated.jpg"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "log_loss", "confusion_matrix"} <= set(metrics["test"])
    # The unreadable pictures are left out of the metrics.
    assert metrics["val"]["n"] + metrics["test"]["n"] == sum(run["split"]["counts"]["val"].values()) + sum(
        run["split"]["counts"]["test"].values()
    ) - sum(1 for f in run["failed"] if f["path"] not in _train_paths(run, pictures))
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_loss" in rows[0]
    # A head on a cache of the same folder sees the same split of the readable pictures.
    extract(pictures, tmp_path / "c.h5", tiny_config)
    head = training.train(tmp_path / "c.h5", "logreg", tmp_path / "logreg", plots=False)
    head_run = json.loads((tmp_path / "logreg" / "run.json").read_text())
    for name in ("val", "test"):
        assert head_run["split"]["counts"][name] == _readable_counts(run, pictures, name)
    assert head.counts["test"] == metrics["test"]["n"]
    import keras

    assert keras.saving.load_model(out / "model.keras", safe_mode=True).output_shape == (None, 2)
    _compare_with_baseline(tmp_path, out)


def _split_of(run, pictures):
    from headstart.extractor.scan import scan_dataset
    from headstart.heads.split import SplitSpec, assign

    ds = scan_dataset(pictures)
    rels = [r for r, _ in ds.items]
    codes = assign(rels, SplitSpec.from_dict(run["split"]))
    return ds, rels, codes


def _train_paths(run, pictures):
    ds, rels, codes = _split_of(run, pictures)
    return {r for r, c in zip(rels, codes) if c == 0}


def _readable_counts(run, pictures, name):
    from headstart.heads.split import SPLITS

    ds, rels, codes = _split_of(run, pictures)
    bad = {f["path"] for f in run["failed"]}
    out = dict.fromkeys(ds.class_names, 0)
    for (rel, label), c in zip(ds.items, codes):
        if SPLITS[c] == name and rel not in bad:
            out[ds.class_names[label]] += 1
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["MISSING"], "does not exist"),
        (["PICS", "--input-size", "40"], "Expected --input-size of at least 46"),
        (["PICS", "--epochs", "0"], "Expected --epochs at least 1"),
        (["PICS", "--split", "0.5,0.5"], "Expected --split as three"),
        (["PICS", "--split", "1,0,0"], "Expected validation pictures"),
    ],
)
def test_bad_input_is_one_line(args, message, pictures, tmp_path):
    args = [a.replace("PICS", str(pictures)).replace("MISSING", str(tmp_path / "nope")) for a in args]
    result = runner.invoke(
        app,
        ["baseline", *args, "--out", str(tmp_path / "o"), "--epochs", "1", "--quiet"]
        if "--epochs" not in args
        else ["baseline", *args, "--out", str(tmp_path / "o"), "--quiet"],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_out_that_is_not_a_run_is_refused(pictures, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["baseline", str(pictures), "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 2 and "Expected --out to be a new or empty folder" in result.output
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def _compare_with_baseline(tmp_path, scratch):
    """compare --baseline adds the row; another split, a head's run, an edited run: one line each."""
    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["compare", str(tmp_path / "c.h5"), "--heads", "logreg", "--out", str(out), "--baseline", str(scratch)]
    )
    assert result.exit_code == 0, result.output
    assert "scratch" in result.output
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["head"] for r in rows] == ["logreg", "scratch"]
    assert (out / "comparison.png").is_file()

    # Another seed means another split: refused, one line.
    other = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "c.h5"),
            "--heads",
            "logreg",
            "--out",
            str(tmp_path / "x"),
            "--seed",
            "1",
            "--baseline",
            str(scratch),
        ],
    )
    assert other.exit_code == 2 and "Expected the baseline on the heads' split" in other.output
    # A head's run is not a baseline.
    head = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "c.h5"),
            "--heads",
            "logreg",
            "--out",
            str(tmp_path / "y"),
            "--baseline",
            str(out / "logreg"),
        ],
    )
    assert head.exit_code == 2 and "made by `headstart baseline`" in head.output
    # A metrics.json edited after the run: refused.
    (scratch / "metrics.json").write_text('{"val": {}, "test": {"accuracy": 1.0}}')
    edited = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "c.h5"),
            "--heads",
            "logreg",
            "--out",
            str(tmp_path / "z"),
            "--baseline",
            str(scratch),
        ],
    )
    assert edited.exit_code == 2 and "changed since" in edited.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
