"""--exclude-list: reading the file, and extract / train / compare leaving its pictures out."""

from __future__ import annotations

import json

import pytest
from conftest import planted_features, write_cache
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import ExcludeListError
from headstart.exclude_list import read_exclude_list

runner = CliRunner()
CLASSES = ("c0", "c1", "c2")


def test_reads_paths_skips_comments_and_normalizes(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("# reviewed\n\nc0/1.jpg\n./c1\\2.jpg\n  c2/3.jpg  \n")
    assert read_exclude_list(f).paths == {"c0/1.jpg", "c1/2.jpg", "c2/3.jpg"}


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"/etc/passwd\n", "relative"),
        (b"c0/../../secret.jpg\n", "relative"),
    ],
)
def test_malformed_lists_are_errors(tmp_path, content, needle):
    f = tmp_path / "x.txt"
    f.write_bytes(content)
    with pytest.raises(ExcludeListError, match=needle):
        read_exclude_list(f)
    with pytest.raises(ExcludeListError, match="no such file"):
        read_exclude_list(tmp_path / "missing.txt")


def test_a_list_too_large_or_swapped_for_a_pipe_is_one_error_and_never_waits(tmp_path, monkeypatch):
    import os

    import headstart.exclude_list as exclude_list

    big = tmp_path / "big.txt"
    big.write_text("c0/1.jpg\n" * 20)
    monkeypatch.setattr(exclude_list, "MAX_BYTES", 64)
    with pytest.raises(ExcludeListError, match="regular file under"):
        read_exclude_list(big)
    monkeypatch.undo()
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(exclude_list.Path, "is_file", lambda self: True)  # the pipe appears after the check
    with pytest.raises(ExcludeListError, match="regular file"):
        read_exclude_list(fifo)  # a blocking read would wait here for a writer forever


@pytest.fixture
def cache(tmp_path):
    x, y, paths, sha, _ = planted_features()
    return write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha)


def test_train_leaves_listed_pictures_out_and_records_them(cache, tmp_path):
    from headstart.cache import open_cache

    with open_cache(cache) as c:
        paths = c.paths
    listed = paths[:30] + ["c9/not-in-the-cache.jpg"]
    (tmp_path / "suspects.txt").write_text("\n".join(listed) + "\n")
    res = runner.invoke(
        app,
        [
            "train",
            str(cache),
            "--head",
            "logreg",
            "--out",
            str(tmp_path / "run"),
            "--exclude-list",
            str(tmp_path / "suspects.txt"),
            "--no-plots",
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["excluded"] == {
        "file": str(tmp_path / "suspects.txt"),
        "paths": sorted(paths[:30]),
        "listed": 31,
        "not_in_cache": 1,
    }
    counts = info["split"]["counts"]
    assert sum(sum(v.values()) for v in counts.values()) == len(paths) - 30
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"]["n"] == sum(counts["test"].values())


def test_compare_and_a_broken_list_is_one_line(cache, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"\x00\xff")
    for cmd in (["compare", str(cache), "--heads", "logreg"], ["train", str(cache)]):
        res = runner.invoke(app, [*cmd, "--out", str(tmp_path / "o"), "--exclude-list", str(tmp_path / "bad.txt")])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "UTF-8" in res.output


def test_extract_skips_listed_pictures_and_prune_drops_them(image_folder, tiny_config, tmp_path):
    from headstart.cache import open_cache
    from headstart.extractor.runner import extract

    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, exclude_paths={"cat/cat.0.jpg"})
    with open_cache(out) as c:
        assert "cat/cat.0.jpg" not in c.paths and len(c) == 11
    extract(image_folder, out, tiny_config)  # without the list it is added
    extract(image_folder, out, tiny_config, exclude_paths={"dog/dog.1.jpg"}, prune=True)
    with open_cache(out) as c:
        assert "dog/dog.1.jpg" not in c.paths and "cat/cat.0.jpg" in c.paths and len(c) == 11


# -- every path a cache can hold round-trips (issue 21, finding 8) --------------------------------

ODD_PATHS = [
    "#1/a.jpg",  # a class folder whose name starts with #
    "c0/new\nline.jpg",
    "c0/carriage\rreturn.jpg",
    " c0/leading space.jpg",
    "c0/trailing space.jpg ",
    '"quoted"/a.jpg',
    "c0/back\\slash.jpg",
    "c0/line\u2028separator.jpg",
    "c0/next\x85line.jpg",
    "c0/tab\t.jpg",
    "c0/plain.jpg",
    "c0/ünïcødé 猫.jpg",
]


def test_the_list_audit_writes_reads_back_every_path_a_cache_can_hold(tmp_path):
    from headstart.audit.run import AuditResult, write

    outliers = [{"path": p, "label": "c0", "score": 1.0} for p in ODD_PATHS]
    result = AuditResult(tmp_path / "c.h5", str(tmp_path), 20, ["c0"], [], [], outliers, [], {}, {})
    write(result, tmp_path / "audit", montages=False)
    assert read_exclude_list(tmp_path / "audit" / "suspects.txt").paths == set(ODD_PATHS)


def test_a_path_with_a_newline_or_a_hash_is_left_out_of_training(tmp_path):
    x, y, paths, sha, _ = planted_features()
    paths = list(paths)
    paths[0], paths[1] = "#c0/first.jpg", "c1/two\nlines.jpg"
    cache = write_cache(tmp_path / "odd.h5", x, y, paths, CLASSES, sha256=sha)
    from headstart.audit.run import AuditResult, write

    outliers = [{"path": p, "label": "c0", "score": 1.0} for p in paths[:2]]
    write(AuditResult(cache, "", len(paths), list(CLASSES), [], [], outliers, [], {}, {}), tmp_path / "a", False)
    listed = tmp_path / "a" / "suspects.txt"
    result = runner.invoke(
        app,
        [
            "train",
            str(cache),
            "--head",
            "logreg",
            "--out",
            str(tmp_path / "run"),
            "--exclude-list",
            str(listed),
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    excluded = json.loads((tmp_path / "run" / "run.json").read_text())["excluded"]
    assert excluded["paths"] == sorted(paths[:2]) and excluded["not_in_cache"] == 0


def test_old_lists_still_read_and_a_stray_quote_is_a_plain_line(tmp_path):
    f = tmp_path / "old.txt"
    f.write_text('c0/1.jpg\r\n"c0/2.jpg\n"c0\\u00e9.jpg"\n')
    assert read_exclude_list(f).paths == {"c0/1.jpg", '"c0/2.jpg', "c0\u00e9.jpg"}
