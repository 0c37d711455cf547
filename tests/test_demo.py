"""headstart demo: generated pictures, the bundled MobileNet, and the wiring of --pets (never the network)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from headstart import demo
from headstart.cli import app

runner = CliRunner()


def test_bundled_weights_are_the_published_file():
    path = demo.bundled_weights()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == demo.WEIGHTS_SHA256
    assert (path.parent / "MOBILENET-WEIGHTS-NOTICE.md").is_file()


def test_make_pictures_is_seeded_and_labelled(tmp_path):
    from PIL import Image

    demo.make_pictures(tmp_path / "a", per_class=3, size=64)
    demo.make_pictures(tmp_path / "b", per_class=3, size=64)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 3 * len(demo.SHAPES)
    assert {f.parts[0] for f in files} == set(demo.SHAPES)
    for f in files:
        a, b = (np.asarray(Image.open(tmp_path / d / f)) for d in ("a", "b"))
        assert a.shape == (64, 64, 3) and np.array_equal(a, b)


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Expected --out to be a new or empty folder" in result.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_pets_dry_run_prints_the_four_commands(tmp_path):
    result = runner.invoke(app, ["demo", "--pets", "--dry-run", "--data", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("[1/4] headstart download pets")
    assert "headstart extract" in lines[1] and "PetImages" in lines[1]
    assert lines[2].startswith("[3/4] headstart compare pets-vgg16-fc2.h5 --out runs/pets")
    assert lines[3].startswith("[4/4] headstart curve pets-vgg16-fc2.h5 --head logreg --out runs/pets-curve")
    assert "nothing was downloaded" in result.output
    assert not (tmp_path / "d").exists()


def test_pets_runs_download_extract_compare_curve_in_order(tmp_path, monkeypatch):
    from headstart import download
    from headstart.extractor import options
    from headstart.extractor import runner as extract_runner
    from headstart.heads import curve, training

    calls = []
    monkeypatch.setattr(download, "download_pets", lambda dest: calls.append(("download", dest)))
    monkeypatch.setattr(options, "make_config", lambda name, layer: calls.append(("config", name, layer)))
    monkeypatch.setattr(extract_runner, "extract", lambda src, out, config: calls.append(("extract", src, out)))
    monkeypatch.setattr(training, "compare", lambda cache, out: calls.append(("compare", cache, out)))
    monkeypatch.setattr(curve, "learning_curve", lambda caches, head, out: calls.append(("curve", caches, head, out)))
    result = runner.invoke(app, ["demo", "--pets", "--data", str(tmp_path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["download", "config", "extract", "compare", "curve"]
    assert calls[4][1:] == ([calls[3][1]], "logreg", tmp_path / "runs-curve")
    assert calls[1] == ("config", "vgg16", "fc2")
    assert calls[2][1] == tmp_path / "PetImages" and calls[3][2] == tmp_path / "runs"


def test_pets_failure_is_one_line(tmp_path, monkeypatch):
    from headstart import download
    from headstart.errors import DownloadError

    def offline(dest):
        raise DownloadError("Could not reach download.microsoft.com: no network.")

    monkeypatch.setattr(download, "download_pets", offline)
    result = runner.invoke(app, ["demo", "--pets", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "Error: Could not reach download.microsoft.com" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_demo_end_to_end_imagenet_beats_random(tmp_path):
    """The whole demo at 15 pictures a class (~25 s): both tables, the note, ImageNet features win."""
    import json

    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--per-class", "15"])
    assert result.exit_code == 0, result.output
    assert "not on photos" in result.output
    assert "ImageNet weights (bundled)" in result.output and "random weights (same network)" in result.output
    summary = json.loads((tmp_path / "demo" / demo.DEMO_JSON).read_text())
    best = {k: max(r["test_accuracy"] for r in rows) for k, rows in summary["tables"].items()}
    assert best["imagenet"] >= 0.8 and best["imagenet"] > best["random"] + 0.3
    assert (tmp_path / "demo" / "runs-imagenet" / "comparison.png").is_file()
    # Run again into the same folder: the earlier demo is replaced, not refused.
    again = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--per-class", "15"])
    assert again.exit_code == 0, again.output


def test_demo_ends_with_the_commands_for_ones_own_pictures(tmp_path, monkeypatch):
    from pathlib import Path

    row = {"head": "logreg", "val_accuracy": 0.9, "test_accuracy": 0.9, "test_log_loss": 0.3, "fit_seconds": 0.1}
    fake = demo.DemoResult(
        out=tmp_path,
        pictures=8,
        tables={"imagenet": [row], "random": [{**row, "test_accuracy": 0.25}]},
        seconds=1.0,
        feature_scale={"imagenet": 0.5, "random": 0.0},
    )
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: fake)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    tail = result.stdout.strip().splitlines()[-5:]
    assert tail[0].startswith("Next, on your own pictures")
    assert (
        tail[1].split()
        == "headstart extract MY_PICTURES/ --out my.h5 --backbone mobilenet --alpha 0.25 --weights bundled".split()
    )
    assert tail[2].split() == "headstart compare my.h5 --out runs/my".split()
    gitignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "/headstart-demo/" in gitignore or "headstart-demo/" in gitignore


def test_an_interrupted_demo_is_resumed_by_the_same_command(tmp_path, monkeypatch):
    from headstart.errors import DemoError
    from headstart.extractor import runner as extract_runner

    out = tmp_path / "demo"
    draw = demo.make_pictures

    def interrupted(root, *args, **kwargs):
        draw(root, per_class=2, size=32)  # some pictures written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "make_pictures", interrupted)
    first = runner.invoke(app, ["demo", "--out", str(out), "--per-class", "10"])
    assert first.exit_code != 0 and "Run the same command" in first.output
    assert any(out.iterdir())

    def reached(*args, **kwargs):
        raise DemoError("reached extraction")

    monkeypatch.setattr(demo, "make_pictures", draw)
    monkeypatch.setattr(extract_runner, "extract", reached)
    again = runner.invoke(app, ["demo", "--out", str(out), "--per-class", "10"])
    assert "reached extraction" in again.output, again.output  # not refused as someone else's folder
    assert len(list((out / "pictures").rglob("*.jpg"))) == 10 * len(demo.SHAPES)
