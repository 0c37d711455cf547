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
