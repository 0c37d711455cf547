"""Tests of headstart.cli.heads: the head commands' exit codes, output and messages."""

import json
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pytest
import typer
from conftest import TINY_FINGERPRINT
from typer.testing import CliRunner

from headstart.cache import CacheHeader, CacheWriter
from headstart.cli.heads import register

SHARED = conftest.SHARED / "data"
FP = TINY_FINGERPRINT

app = typer.Typer()
register(app)
runner = CliRunner()


def write_cache(path, n=300, fp=FP, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (5 + np.random.default_rng(0).normal(0, 0.6, (2, 32))[y] + rng.normal(0, 1, (n, 32))).astype(np.float32)
    header = CacheHeader(
        dim=32,
        dtype="float16",
        fingerprint=fp,
        class_names=("cat", "dog"),
        root="/data/pets",
    )
    with CacheWriter(path, header) as w:
        w.append(X, y, [f"{'cd'[k]}/{i}.jpg" for i, k in enumerate(y)])
        w.close(complete=True)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cli") / "feats.h5")


@pytest.fixture(scope="module")
def run_dir(cache):
    out = cache.parent / "runs" / "logreg"
    result = runner.invoke(app, ["train", str(cache), "--head", "logreg", "--out", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    return out


def test_train_prints_a_summary_and_writes_the_run(run_dir):
    assert (run_dir / "run.json").exists() and (run_dir / "head.npz").exists()
    result = runner.invoke(
        app,
        [
            "train",
            str(json.loads((run_dir / "run.json").read_text())["cache"]["path"]),
            "--out",
            str(run_dir),
            "--no-plots",
            "--seed",
            "3",
            "--split",
            "80,10,10",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Trained logreg in" in result.stdout and "validation  accuracy" in result.stdout
    assert f"Run written to {run_dir}" in result.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["split"]["seed"] == 3 and run["split"]["fractions"] == [0.8, 0.1, 0.1]


def test_compare_prints_one_table(cache, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        [
            "compare",
            str(cache),
            "--heads",
            "logreg,softmax",
            "--out",
            str(out),
            "--epochs",
            "5",
            "--batch-size",
            "64",
            "--learning-rate",
            "0.02",
            "--class-weight",
            "balanced",
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    for word in ("head", "val accuracy", "test accuracy", "test log loss", "fit s", "logreg", "softmax"):
        assert word in result.stdout
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["head"] for r in rows] == ["logreg", "softmax"]
    assert json.loads((out / "softmax" / "run.json").read_text())["params"]["class_weight"] == "balanced"


def test_evaluate_prints_metrics_and_json(run_dir):
    result = runner.invoke(app, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "test split" in result.stdout and "accuracy" in result.stdout and "roc auc" in result.stdout
    assert "precision" in result.stdout
    result = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["scope"] == "test split" and data["metrics"]["n"] > 0


def test_evaluate_refuses_a_mismatched_cache_with_exit_2(run_dir, tmp_path):
    other = write_cache(tmp_path / "other.h5", 40, fp={**FP, "layer": "pool"})
    result = runner.invoke(app, ["evaluate", str(run_dir), str(other)])
    assert result.exit_code == 2
    assert "Error:" in result.stderr and "layer: 'embed' (run) vs 'pool' (cache)" in result.stderr
    assert result.stdout == ""


def test_misclassified_lists_pictures_and_draws_a_montage(run_dir, tmp_path):
    result = runner.invoke(app, ["misclassified", str(run_dir), "-n", "2", "--montage", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    assert "test pictures misclassified" in result.stdout
    lines = result.stdout.splitlines()
    header = lines.index("path\ttrue\tpredicted\tp(predicted)\tloss")
    rows = [line.split("\t") for line in lines[header + 1 :] if "\t" in line]
    assert 1 <= len(rows) <= 2 and all(len(r) == 5 for r in rows)
    losses = [float(r[4]) for r in rows]
    assert losses == sorted(losses, reverse=True)  # "of highest loss": highest first, and shown
    old_name = runner.invoke(app, ["misclassified", str(run_dir), "--number", "1"])  # hidden alias of --top
    assert old_name.exit_code == 0 and len([ln for ln in old_name.stdout.splitlines() if ln.count("\t") == 4]) == 2
    assert (tmp_path / "m.png").exists()
    data = json.loads(runner.invoke(app, ["misclassified", str(run_dir), "--json"]).stdout)
    assert data["n_wrong"] == len(data["mistakes"]) or len(data["mistakes"]) == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{cache}", "--split", "0.5,0.5"], "three comma-separated fractions"),
        (["train", "{cache}", "--head", "rbf"], "Expected a head among softmax, logreg, mlp, knn, svm"),
        (["train", "{cache}", "--head", "logreg", "--epochs", "3"], "--epochs does not apply to the logreg head"),
        (["train", "{cache}", "--class-weight", "uneven"], "--class-weight none or balanced"),
        (["train", "{tmp}/missing.h5"], "no such file"),
        (["evaluate", "{tmp}"], "Expected a run folder made by `headstart train`"),
        (
            ["compare", "{cache}", "--heads", "logreg", "--dropout", "0.1"],
            "--dropout does not apply to the logreg head",
        ),
        (["misclassified", "{tmp}/nope"], "no such folder"),
    ],
)
def test_bad_input_gives_a_message_and_exit_2(args, message, cache, tmp_path):
    args = [a.format(cache=cache, tmp=tmp_path) for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_every_command_has_help_with_an_example():
    for command in ("train", "compare", "evaluate", "predict", "misclassified"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: headstart " + command in result.stdout


def test_importing_the_commands_loads_no_tensorflow_keras_or_matplotlib():
    code = (
        "import sys, headstart.cli.heads; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def picture_run(tmp_path_factory):
    pytest.importorskip("headstart.extractor.runner")
    if not (SHARED / "pets-sample").is_dir():
        pytest.skip("../shared/data/pets-sample is not here")
    from headstart.extractor.embed import embed_files
    from headstart.extractor.options import make_config

    config = make_config("tiny", weights="none", input_size=32)
    root = SHARED / "pets-sample"
    files = sorted(root.glob("Cat/*.jpg"))[:8] + sorted(root.glob("Dog/*.jpg"))[:8]
    res = embed_files(files, config)
    fp = config.fingerprint()
    tmp = tmp_path_factory.mktemp("pictures")
    header = CacheHeader(
        dim=res.features.shape[1],
        dtype="float16",
        fingerprint=fp,
        class_names=("Cat", "Dog"),
        root=str(root),
    )
    with CacheWriter(tmp / "pets.h5", header) as w:
        ok = [Path(p) for p in res.ok]
        w.append(res.features, [int(p.parent.name == "Dog") for p in ok], [p.relative_to(root).as_posix() for p in ok])
        w.close(complete=True)
    result = runner.invoke(
        app, ["train", str(tmp / "pets.h5"), "--out", str(tmp / "run"), "--split", "0.6,0.2,0.2", "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    return tmp / "run", files


def test_predict_prints_a_line_per_picture_and_exit_1_when_some_fail(picture_run):
    run, files = picture_run
    bad = SHARED / "bad-images"
    result = runner.invoke(
        app, ["predict", str(run), str(files[0]), str(bad / "rgba.png"), str(bad / "empty.jpg"), "--top-k", "2"]
    )
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(files[0]) + "\t")
    assert "Cat" in lines[0] and "Dog" in lines[0]
    assert f"{bad / 'empty.jpg'}: empty file" in result.stderr
    assert "1 of 3 pictures could not be predicted" in result.stderr


def test_predict_json_and_exit_0_when_all_are_read(picture_run):
    run, files = picture_run
    result = runner.invoke(app, ["predict", str(run), str(files[1]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["failed"] == 0
    (pred,) = data["predictions"]
    assert pred["path"] == str(files[1]) and pred["class"] in ("Cat", "Dog") and 0.5 <= pred["probability"] <= 1


def test_train_knn_with_temperature_calibration(cache, tmp_path):
    out = tmp_path / "knn"
    result = runner.invoke(
        app, ["train", str(cache), "--head", "knn", "--calibrate", "temperature", "--out", str(out), "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    assert "Trained knn" in result.stdout and "temperature" in result.stdout
    assert "fitted on" in result.stdout and "calibration (calibration split): log loss" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["calibration"]["method"] == "temperature"
    result = runner.invoke(app, ["train", str(cache), "--head", "knn", "--calibrate", "isotonic"])
    assert result.exit_code == 2 and "Expected --calibrate among none, temperature" in result.stderr
    args = ["train", str(cache), "--head", "knn", "--calibrate", "temperature", "--no-plots"]
    result = runner.invoke(app, [*args, "--calibration-rows", "crossfit", "--out", str(tmp_path / "x")])
    assert result.exit_code == 0 and "scored out of 5 folds (cross-fitting)" in result.stdout, result.output
    result = runner.invoke(app, [*args, "--calibration-fraction", "1.5", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "Expected --calibration-fraction between 0 and 1" in result.stderr


def test_train_takes_k_and_c_only_for_the_heads_that_have_them(cache, tmp_path):
    result = runner.invoke(
        app, ["train", str(cache), "--head", "svm", "--C", "0.01", "--out", str(tmp_path / "svm"), "--no-plots"]
    )
    assert result.exit_code == 0 and "C=0.01" in result.stdout
    result = runner.invoke(app, ["train", str(cache), "--head", "logreg", "--k", "3", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--k does not apply to the logreg head; it applies to knn" in result.stderr
