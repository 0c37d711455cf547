"""headstart map: 2-D projections as PNG or one self-contained HTML page."""

from __future__ import annotations

import json
import re

import pytest
from conftest import planted_features, write_cache
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()
CLASSES = ("c0", "c1", "c2")


@pytest.fixture
def cache(tmp_path):
    x, y, paths, sha, _ = planted_features()
    return write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha)


def test_map_png_with_tsne(cache, tmp_path):
    out = tmp_path / "map.png"
    res = runner.invoke(app, ["map", str(cache), "--out", str(out), "--method", "tsne"])
    assert res.exit_code == 0, res.output
    assert "120 of 120 pictures drawn (tsne)" in res.output
    assert out.read_bytes().startswith(b"\x89PNG")


def test_map_html_marks_audit_findings_and_sample(cache, tmp_path):
    from headstart.audit import audit

    audit(cache, tmp_path / "a", montages=False)
    out = tmp_path / "map.html"
    res = runner.invoke(
        app,
        ["map", str(cache), "--out", str(out), "--audit", str(tmp_path / "a"), "--method", "pca", "--max-points", "50"],
    )
    assert res.exit_code == 0, res.output
    assert "50 of 120 pictures drawn (pca)" in res.output
    page = out.read_text()
    data = json.loads(re.search(r'id="map-data">(.*?)</script>', page).group(1))
    assert len(data["points"]) == 50 and page.count("<circle") == 50
    assert {"path", "label", "wrong", "flags", "thumb"} <= set(data["points"][0])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "map.svg"], ".png or .html"),
        (["--out", "map.png", "--method", "magic"], "auto, tsne, umap, pca"),
        (["--out", "map.png", "--max-points", "1"], "at least 3"),
    ],
)
def test_map_bad_options_are_one_line(cache, tmp_path, args, needle):
    res = runner.invoke(app, ["map", str(cache), *[a if not a.startswith("map.") else str(tmp_path / a) for a in args]])
    assert res.exit_code == 2 and needle in res.output and len(res.output.strip().splitlines()) == 1


def test_map_broken_cache_is_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage" * 100)
    res = runner.invoke(app, ["map", str(bad), "--out", str(tmp_path / "m.png")])
    assert res.exit_code == 2 and res.output.startswith("Error:")


def test_map_marks_are_not_a_class_colour(cache, tmp_path):
    """Issue 16: the "flagged" ring was red, the colour of the fourth class."""
    from matplotlib.colors import to_rgb

    from headstart.audit import audit
    from headstart.audit.projection import PALETTE

    audit(cache, tmp_path / "a", montages=False)
    out = tmp_path / "map.html"
    res = runner.invoke(app, ["map", str(cache), "--out", str(out), "--audit", str(tmp_path / "a"), "--method", "pca"])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    data = json.loads(re.search(r'id="map-data">(.*?)</script>', page).group(1))
    circles = {int(m.group(1)): m.group(0) for m in re.finditer(r'<circle data-i="(\d+)"[^>]*>', page)}
    flagged = [circles[i] for i, p in enumerate(data["points"]) if p["flags"]]
    wrong = [circles[i] for i, p in enumerate(data["points"]) if p["wrong"] and not p["flags"]]
    assert flagged
    strokes = {re.search(r'stroke="([^"]+)"', c).group(1) for c in flagged}
    for stroke in strokes:
        distance = min(sum((a - b) ** 2 for a, b in zip(to_rgb(stroke), to_rgb(c))) ** 0.5 for c in PALETTE)
        assert distance > 0.4, (stroke, distance)  # far from all 16 class colours
    if wrong:  # and told apart from the misclassified ring
        assert {re.search(r'stroke="[^"]+"[^>]*', c).group(0) for c in wrong}.isdisjoint(
            {re.search(r'stroke="[^"]+"[^>]*', c).group(0) for c in flagged}
        )
