"""headstart report: one self-contained HTML page of a run or comparison, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import planted_features, write_cache
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()
CLASSES = ("c0", "c1", "c2")
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A comparison folder of one logreg run on a small cache whose paths hold HTML, with an audit."""
    from headstart.audit import audit
    from headstart.heads.training import compare

    tmp = tmp_path_factory.mktemp("report")
    x, y, paths, sha, _ = planted_features()
    y[::7] = (y[::7] + 1) % 3  # some mistakes to show
    paths = [p.replace(".jpg", f"{HOSTILE}.jpg") if i % 3 == 0 else p for i, p in enumerate(paths)]
    cache = write_cache(tmp / "c.h5", x, y, paths, CLASSES, sha256=sha)
    compare(cache, tmp / "cmp", heads=["logreg"])
    audit(cache, tmp / "cmp", montages=False)  # audit.json beside comparison.json is picked up
    return tmp / "cmp"


def test_report_holds_every_section_and_escapes_file_strings(comparison, tmp_path):
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(comparison), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "audit included" in res.output
    page = out.read_text()
    for heading in (
        "Comparison",
        "Settings",
        "Metrics",
        "Per class",
        "Confusion matrix",
        "Curves, confusion, calibration",
        "Most confident mistakes",
        "Audit",
        "Label issues",
    ):
        assert heading in page, heading
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert re.findall(r"<script[^>]*>", page) == ["<script>"]  # only ours
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from the network
    assert page.count("data:image/png;base64,") >= 4  # comparison, curves, confusion, calibration


def test_report_of_one_run(comparison, tmp_path):
    out = tmp_path / "run.html"
    res = runner.invoke(app, ["report", str(comparison / "logreg"), "--out", str(out), "--mistakes", "0"])
    assert res.exit_code == 0, res.output
    assert "Run: logreg" in out.read_text() and "Comparison</h2>" not in out.read_text()


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("comparison.json", "{not json", "comparison.json"),
        ("comparison.json", '{"rows": [{"head": "../../etc"}]}', "plain name"),
        ("comparison.json", '{"rows": [{"head": "logreg", "test_accuracy": "high"}]}', "not a number"),
        ("logreg/run.json", '{"head": 3}', "run.json"),
        ("logreg/metrics.json", '{"test": {"confusion_matrix": [["<b>"]]}}', "metrics.json"),
        ("audit.json", '{"outliers": [{"path": "a"}]}', "audit.json"),
    ],
)
def test_report_broken_input_is_one_line(comparison, tmp_path, name, text, needle):
    copy = tmp_path / "cmp"
    shutil.copytree(comparison, copy)
    (copy / name).write_text(text)
    res = runner.invoke(app, ["report", str(copy), "--out", str(tmp_path / "r.html"), "--mistakes", "0"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in res.output
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_what_is_not_a_run(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "run.json or comparison.json" in res.output
    res = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.pdf")])
    assert res.exit_code == 2 and ".html" in res.output


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@needs_chromium
def test_report_loads_offline_in_chromium_without_console_errors(comparison, tmp_path):
    out = tmp_path / "report.html"
    assert runner.invoke(app, ["report", str(comparison), "--out", str(out)]).exit_code == 0
    dom = chromium("--dump-dom", out.as_uri())
    assert 'data-ready="1"' in dom.stdout  # our script ran to its end
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == []  # no error, no blocked resource, no script of a file name
    assert "pwned" not in dom.stdout.split("</title>")[0]
    shot = tmp_path / "report.png"
    chromium("--window-size=1200,900", f"--screenshot={shot}", out.as_uri())
    from PIL import Image

    with Image.open(shot) as im:
        arr = np.asarray(im.convert("L"))
    assert im.size == (1200, 900) and arr.std() > 10  # a drawn page (the comparison table on top), not blank


@needs_chromium
def test_map_html_loads_offline_in_chromium(tmp_path):
    x, y, paths, sha, _ = planted_features()
    paths[0] = f"c0/{HOSTILE}.jpg"
    cache = write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha)
    out = tmp_path / "map.html"
    res = runner.invoke(app, ["map", str(cache), "--out", str(out), "--method", "pca"])
    assert res.exit_code == 0, res.output
    dom = chromium("--dump-dom", out.as_uri())
    assert 'data-ready="1"' in dom.stdout and [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln] == []


def _summary(page: str) -> str:
    return re.search(r'<section id="summary">(.*?)</section>', page, re.S).group(1)


def test_report_opens_with_best_head_audit_headline_and_next_command(comparison, tmp_path):
    """Issue 16: the page was ~14 screens with no summary; it opens with what a reader came for."""
    import json

    out = tmp_path / "report.html"
    assert runner.invoke(app, ["report", str(comparison), "--out", str(out)]).exit_code == 0
    page = out.read_text()
    assert page.index('id="summary"') < page.index("Comparison</h2>") < page.index("Run: logreg")
    summary = _summary(page)
    test_acc = json.loads((comparison / "logreg" / "metrics.json").read_text())["test"]["accuracy"]
    assert "Head: " in summary and "logreg" in summary and f"{test_acc:.3f}" in summary
    audit = json.loads((comparison / "audit.json").read_text())
    assert f"{len(audit['label_issues']):,} label issues" in summary
    assert "headstart compare" in summary and "--exclude-list" in summary and "suspects.txt" in summary
    # raw settings, per-class and confusion tables folded; the best run itself open
    assert re.search(r"<details><summary>Settings \(head, cache, extraction, split\)</summary><table", page)
    assert re.search(r"<details><summary>Per class \(test\)</summary>", page)
    assert '<details class="run" id="run-logreg" open>' in page


def test_report_without_audit_says_to_audit_and_folds_the_other_runs(tmp_path):
    from headstart.heads.training import compare

    x, y, paths, sha, _ = planted_features()
    cache = write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha)
    res = compare(cache, tmp_path / "cmp", heads=["logreg", "knn"], plots=False)
    out = tmp_path / "r.html"
    assert runner.invoke(app, ["report", str(tmp_path / "cmp"), "--out", str(out), "--mistakes", "0"]).exit_code == 0
    page = out.read_text()
    import json

    val = {r["head"]: json.loads((res.out / r["head"] / "metrics.json").read_text())["val"] for r in res.rows}
    best = min(val, key=lambda h: (-val[h]["accuracy"], val[h]["log_loss"]))  # chosen on validation, never test
    other = ({"logreg", "knn"} - {best}).pop()
    assert f'<details class="run" id="run-{best}" open>' in page
    assert f'<details class="run" id="run-{other}">' in page
    summary = _summary(page)
    assert f'Best head: <a href="#run-{best}">{best}</a>' in summary.replace("</b>", "")
    assert "none included" in summary and "headstart audit" in summary


def _red_jpeg(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)


def test_report_takes_thumbnails_only_from_the_cache_root(tmp_path):
    """A forged audit.json root, or a picture in the root that links outside it, embeds nothing."""
    import json

    from headstart.audit import audit
    from headstart.heads.training import compare

    x, y, paths, sha, _ = planted_features()
    root = tmp_path / "data"
    root.mkdir()
    secret = tmp_path / "private"
    cache = write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha, root=str(root))
    compare(cache, tmp_path / "cmp", heads=["logreg"])
    audit(cache, tmp_path / "cmp", montages=False)
    doc = json.loads((tmp_path / "cmp" / "audit.json").read_text())
    assert doc["label_issues"]
    for item in doc["label_issues"]:  # the same relative paths, outside the cache's root
        _red_jpeg(secret / item["path"])
    first = doc["label_issues"][0]["path"]
    (root / first).parent.mkdir(parents=True, exist_ok=True)
    (root / first).symlink_to(secret / first)  # inside the root, a link out of it
    doc["root"] = str(secret)
    (tmp_path / "cmp" / "audit.json").write_text(json.dumps(doc))

    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(tmp_path / "cmp"), "--out", str(out), "--mistakes", "0"])
    assert res.exit_code == 0, res.output
    assert "data:image/jpeg" not in out.read_text()
    assert "not the root" in res.output  # the user is told why the thumbnails are missing

    doc["root"] = str(root)  # the cache's own root: pictures really inside it are shown
    (tmp_path / "cmp" / "audit.json").write_text(json.dumps(doc))
    _red_jpeg(root / doc["label_issues"][1]["path"])
    res = runner.invoke(app, ["report", str(tmp_path / "cmp"), "--out", str(out), "--mistakes", "0"])
    assert res.exit_code == 0, res.output
    assert out.read_text().count("data:image/jpeg") == 1


def test_report_mistakes_do_not_follow_links_out_of_the_cache_root(tmp_path):
    from headstart.heads.evaluation import misclassified
    from headstart.heads.training import compare

    x, y, paths, sha, _ = planted_features()
    y[::7] = (y[::7] + 1) % 3
    root = tmp_path / "data"
    cache = write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha, root=str(root))
    compare(cache, tmp_path / "cmp", heads=["logreg"])
    wrong = misclassified(tmp_path / "cmp" / "logreg", 50).mistakes
    assert len(wrong) >= 2
    _red_jpeg(tmp_path / "private.jpg")
    (root / wrong[0].path).parent.mkdir(parents=True, exist_ok=True)
    (root / wrong[0].path).symlink_to(tmp_path / "private.jpg")
    _red_jpeg(root / wrong[1].path)
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(tmp_path / "cmp"), "--out", str(out), "--mistakes", "50"])
    assert res.exit_code == 0, res.output
    assert out.read_text().count("data:image/jpeg") == 1  # the real one, not the link
