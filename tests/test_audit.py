"""headstart.audit: duplicates, leakage, label issues, outliers, hashes, reduction; the audit command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import planted_features, write_cache
from typer.testing import CliRunner

from headstart.audit import audit, load_audit
from headstart.audit import space as S
from headstart.audit.hashes import content_hashes, safe_file
from headstart.cli import app
from headstart.errors import AuditError

runner = CliRunner()
CLASSES = ("c0", "c1", "c2")


@pytest.fixture
def planted_cache(tmp_path: Path):
    x, y, paths, sha, planted = planted_features()
    return write_cache(tmp_path / "planted.h5", x, y, paths, CLASSES, sha256=sha), planted


def _groups(result):
    return [set(g["paths"]) for g in result.duplicates]


def test_audit_finds_each_planted_problem(planted_cache, tmp_path):
    cache, planted = planted_cache
    result = audit(cache, tmp_path / "out", montages=False)
    groups = _groups(result)
    assert set(planted["exact"]) in groups
    exact = next(g for g in result.duplicates if set(g["paths"]) == set(planted["exact"]))
    assert exact["exact"] and exact["similarity"] == 1.0 and len(exact["splits"]) == 2
    assert set(planted["near"]) in groups
    near = next(g for g in result.duplicates if set(g["paths"]) == set(planted["near"]))
    assert not near["exact"] and near["similarity"] >= 0.75
    assert len(groups) == 2  # distinct rows of one cluster are not duplicates
    assert planted["flipped"] in [i["path"] for i in result.label_issues[:3]]
    issue = next(i for i in result.label_issues if i["path"] == planted["flipped"])
    assert issue["label"] == "c1" and issue["suggested"] == "c0" and 0 <= issue["score"] < 0.5
    assert issue["margin"] > 0 and issue["p_given"] == pytest.approx(issue["score"], abs=0.5)
    top6 = [o["path"] for o in result.outliers[:6]]
    assert planted["outlier"] in top6 and set(planted["group"]) <= set(top6)

    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert {"label_issues", "duplicates", "outliers"} <= set(saved)
    assert set(saved["label_issues"][0]) >= {"path", "label", "suggested", "score"}
    assert set(saved["duplicates"][0]) >= {"paths", "similarity", "exact", "splits"}
    assert set(saved["outliers"][0]) == {"path", "label", "score", "score_all", "score_class"}
    assert set(saved["label_issues"][0]) >= {"margin", "p_given"} and saved["counts"]["suspects"] == len(
        result.suspects()
    )
    suspects = (tmp_path / "out" / "suspects.txt").read_text().splitlines()
    assert planted["flipped"] in suspects and planted["outlier"] in suspects
    assert sum(p in suspects for p in planted["exact"]) == 1  # one picture of the pair is kept
    assert load_audit(tmp_path / "out")["rows"] == result.rows


def test_leakage_flags_groups_across_splits(tmp_path):
    from headstart.heads.split import SplitSpec, assign

    x, y, paths, sha, planted = planted_features()
    codes = assign(paths, SplitSpec())
    # give row 1 (the exact copy of row 0) a path that lands in another split than row 0
    for k in range(1000):
        name = f"c0/copy{k}.jpg"
        if assign([name], SplitSpec())[0] != codes[0]:
            paths[1] = name
            break
    cache = write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha)
    result = audit(cache, montages=False)
    group = next(g for g in result.duplicates if g["exact"])
    assert group["leakage"] and len(set(group["splits"])) == 2
    assert group in result.leakage


def test_reduced_search_confirms_on_full_rows(planted_cache):
    """With fewer search dimensions than features, pairs are confirmed on the full rows."""
    cache, planted = planted_cache
    result = audit(cache, dims=8, montages=False)
    assert result.settings["dims"] == 8 and 0 < result.settings["explained_variance"] < 1
    assert set(planted["near"]) in _groups(result) and set(planted["exact"]) in _groups(result)
    top6 = [o["path"] for o in result.outliers[:6]]
    assert planted["outlier"] in top6 and set(planted["group"]) <= set(top6)


def test_the_planted_group_hides_from_a_few_nearest_neighbours(planted_cache):
    """The fixture asks for more than one picture's nearest neighbours can tell: with k = 1 or 5
    the planted group is not in the top 6, with the audit's score all of it is."""
    from headstart.audit import outliers as O
    from headstart.cache import open_cache

    cache, planted = planted_cache
    with open_cache(cache) as c:
        paths, labels = c.paths, c.labels
        space = S.reduce(c)
    near = S.neighbours(space, O.neighbour_count(len(paths)), 0.9, labels=labels)
    group = [paths.index(p) for p in planted["group"]]
    for k in (1, 5):
        top6 = O.rank_outliers(1 - near.top_sim[:, :k].mean(axis=1), 6)
        assert sum(r in top6 for r in group) <= 1, k
    scores, _, _ = O.outlier_scores(near.top_sim, near.class_sim, labels)
    assert set(group) <= set(O.rank_outliers(scores, 6).tolist())


def test_reduce_streams_blocks_and_matches_svd(planted_cache):
    from headstart.cache import open_cache

    cache, _ = planted_cache
    with open_cache(cache) as c:
        x = c.read().astype(np.float64)
        space = S.reduce(c, dims=10, block_rows=16)  # many small blocks
    s = np.linalg.svd(x, compute_uv=False)
    assert space.coords.shape == (len(x), 10)
    assert space.explained == pytest.approx((s[:10] ** 2).sum() / (s**2).sum(), rel=1e-2)  # randomized
    assert np.allclose(np.linalg.norm(space.unit, axis=1), 1, atol=1e-5)


def test_neighbours_match_brute_force_tile_by_tile():
    rng = np.random.default_rng(1)
    coords = np.abs(rng.normal(size=(50, 8))).astype(np.float32)
    coords[7] = coords[3] * 1.01  # a near copy
    mean = coords.mean(axis=0)
    space = S.Space(mean.astype(np.float64), None, coords, mean, 1.0)
    got = S.neighbours(space, 4, cut=0.9, per_row=3, query_rows=7)
    raw = S._normalize(coords) @ S._normalize(coords).T
    np.fill_diagonal(raw, -np.inf)
    assert np.allclose(got.top_sim, -np.sort(-raw, axis=1)[:, :4], atol=1e-5)
    cen = S._normalize(coords - mean) @ S._normalize(coords - mean).T
    np.fill_diagonal(cen, -np.inf)
    want = {(i, j) for i, j in zip(*np.nonzero(cen >= 0.9)) if i < j}
    assert {tuple(p) for p in got.pairs.tolist()} == want and (3, 7) in want
    assert np.allclose(got.pair_sim, [cen[i, j] for i, j in got.pairs], atol=1e-5)
    assert np.allclose(got.nearest, cen.max(axis=1), atol=1e-5)
    labels = np.random.default_rng(2).integers(0, 3, 50)
    labels[labels == 2] = 2 * (np.arange((labels == 2).sum()) < 3)  # class 2: 3 rows, fewer than k + 1
    by = S.neighbours(space, 4, cut=0.9, per_row=3, query_rows=7, labels=labels)
    assert np.allclose(by.top_sim, got.top_sim) and np.allclose(by.nearest, got.nearest)
    assert {tuple(p) for p in by.pairs.tolist()} == want
    for i in range(50):
        same = np.sort(raw[i, labels == labels[i]])[::-1][:4]  # its own -inf last
        assert np.allclose(by.class_sim[i, : len(same)], same, atol=1e-5), i


def test_version1_cache_hashes_files_and_notes_missing(tmp_path):
    root = tmp_path / "pictures"
    (root / "c0").mkdir(parents=True)
    x, y, paths, _, planted = planted_features()
    for i, p in enumerate(paths):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"same bytes" if i < 2 else f"picture {i}".encode())
    (root / paths[7]).unlink()
    cache = write_cache(tmp_path / "v1.h5", x, y, paths, CLASSES, root=str(root))
    with h5py.File(cache, "a") as f:  # what a version-1 cache looks like
        del f["sha256"]
        f.attrs["schema_version"] = 1
    result = audit(cache, montages=False)
    assert result.settings["schema_version"] == 1
    exact = [g for g in result.duplicates if g["exact"]]
    assert [set(g["paths"]) for g in exact] == [set(planted["exact"])]
    assert any("1 pictures could not be hashed" in n for n in result.notes)


def test_content_hashes_never_read_outside_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    hashes, notes = content_hashes(["../secret.jpg", "/etc/passwd", ""], None, tmp_path / "root")
    assert hashes == [None, None, None] and "3 pictures could not be hashed" in notes[-1]
    assert safe_file(tmp_path, "secret.jpg") is not None


def test_too_small_and_bad_settings_are_audit_errors(tmp_path):
    x, y, paths, sha, _ = planted_features()
    small = write_cache(tmp_path / "small.h5", x[:2], y[:2], paths[:2], CLASSES)
    with pytest.raises(AuditError, match="at least 3 pictures"):
        audit(small)
    ok = write_cache(tmp_path / "ok.h5", x, y, paths, CLASSES)
    with pytest.raises(AuditError, match="threshold"):
        audit(ok, threshold=1.5)


def test_one_class_gives_a_note_not_an_error(tmp_path):
    x, _, paths, sha, _ = planted_features()
    cache = write_cache(tmp_path / "one.h5", x, np.zeros(len(x), int), paths, ("only",), sha256=sha)
    result = audit(cache, montages=False)
    assert result.label_issues == [] and any("two classes" in n for n in result.notes)


def test_cli_audit_prints_tables_and_writes_files(planted_cache, tmp_path):
    cache, planted = planted_cache
    res = runner.invoke(app, ["audit", str(cache), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "label issues" in res.output and "duplicates" in res.output and "outliers" in res.output
    assert planted["flipped"] in res.output
    for name in ("audit.json", "suspects.txt", "label_issues.png", "duplicates.png", "outliers.png"):
        assert (tmp_path / "a" / name).is_file()
    res = runner.invoke(app, ["audit", str(cache), "--json", "--no-montages"])
    assert res.exit_code == 0 and json.loads(res.stdout)["rows"] == 120


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 100, np.random.default_rng(0).bytes(4096)])
def test_cli_audit_broken_cache_is_one_line(tmp_path, content):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(content)
    res = runner.invoke(app, ["audit", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip().startswith("Error:") and len(res.output.strip().splitlines()) == 1


def test_cli_audit_non_finite_features_and_labels_out_of_range(tmp_path):
    x, y, paths, sha, _ = planted_features()
    x[7, 3] = np.nan
    cache = write_cache(tmp_path / "nan.h5", x, y, paths, CLASSES)
    res = runner.invoke(app, ["audit", str(cache)])
    assert res.exit_code == 2 and "finite" in res.output and "row 7" in res.output
    x[7, 3] = 0
    cache = write_cache(tmp_path / "lab.h5", x, y, paths, CLASSES)
    with h5py.File(cache, "a") as f:
        f["labels"][0] = 9
    res = runner.invoke(app, ["audit", str(cache)])
    assert res.exit_code == 2 and "labels" in res.output


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"label_issues": [{"path": 3}]}',
        '{"duplicates": [{"paths": ["a"], "similarity": 1, "exact": true, "splits": ["x"]}]}',
    ],
)
def test_load_audit_rejects_malformed_files(tmp_path, text):
    (tmp_path / "audit.json").write_text(text)
    with pytest.raises(AuditError, match="Expected an audit.json"):
        load_audit(tmp_path)


def _damage(f, how):
    if how == "features-1d":
        del f["features"]
        f.create_dataset("features", data=np.zeros(120))
    elif how == "labels-short":
        del f["labels"]
        f.create_dataset("labels", data=np.zeros(5, "int32"))
    elif how == "paths-int":
        del f["paths"]
        f.create_dataset("paths", data=np.zeros(120, "int32"))
    elif how == "progress-negative":
        f["progress"][0] = -5
    elif how == "fingerprint-not-json":
        f.attrs["fingerprint"] = "{not json"
    elif how == "sha256-int":
        del f["sha256"]
        f.create_dataset("sha256", data=np.zeros(120, "int32"))


@pytest.mark.parametrize(
    "how", ["features-1d", "labels-short", "paths-int", "progress-negative", "fingerprint-not-json", "sha256-int"]
)
@pytest.mark.parametrize("command", ["audit", "map"])
def test_damaged_cache_is_one_line_for_audit_and_map(tmp_path, how, command):
    x, y, paths, sha, _ = planted_features()
    cache = write_cache(tmp_path / "c.h5", x, y, paths, CLASSES, sha256=sha)
    with h5py.File(cache, "a") as f:
        _damage(f, how)
    args = ["--no-montages"] if command == "audit" else ["--out", str(tmp_path / "m.png"), "--method", "pca"]
    res = runner.invoke(app, [command, str(cache), *args])
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("shape, width", [((7, 100), 8), ((3, 1000), 64), ((4, 20), 64)])
def test_top_k_equals_a_full_sort(shape, width):
    g = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    want = -np.sort(-g, axis=1)[:, :5]
    assert np.array_equal(S._top_k(g, 5, width=width), want)


def test_cli_defaults_match_the_library():
    import inspect

    from headstart.audit import duplicates, labels, run
    from headstart.cli.audit import audit_cmd

    defaults = {k: v.default.default for k, v in inspect.signature(audit_cmd).parameters.items()}
    assert defaults["threshold"] == duplicates.THRESHOLD
    assert defaults["folds"] == labels.FOLDS
    assert defaults["outliers"] == run.TOP_OUTLIERS
    assert defaults["keep_weak"] is False


def test_near_duplicate_groups_do_not_chain():
    """a~b and b~c above the threshold, a~c not: complete linkage never puts a and c in one group."""
    from headstart.audit.duplicates import find_duplicates

    pairs = np.array([[0, 1], [1, 2], [3, 4], [3, 5], [4, 5]])
    sims = np.array([0.95, 0.9, 0.9, 0.85, 0.8], dtype=np.float32)
    groups = find_duplicates([None] * 6, pairs, sims, np.zeros(6, int))
    assert [g.rows for g in groups] == [[0, 1], [3, 4, 5]]
    assert groups[1].similarity == pytest.approx(0.8)  # the lowest pair inside, not the one that joined


def test_threshold_is_derived_from_the_nearest_neighbour_bulk():
    from headstart.audit.duplicates import CEILING, derive_threshold

    rng = np.random.default_rng(0)
    bulk = rng.normal(0.5, 0.08, 2000)
    t = derive_threshold(bulk)
    assert bulk.max() < t + 0.05 and 0.75 < t < 0.9
    with_copies = np.concatenate([bulk, rng.uniform(0.9, 1.0, 400)])  # a sixth of the rows are copies
    assert abs(derive_threshold(with_copies) - t) < 0.05
    assert derive_threshold(bulk + 0.15) == pytest.approx(t + 0.15, abs=0.01)  # where photos look more alike
    assert derive_threshold(bulk + 0.3) == CEILING
    assert derive_threshold(np.full(2, 0.5)) == CEILING  # too few rows to say: only near-identical


def test_audit_threshold_follows_the_feature_space(planted_cache, tmp_path):
    """The same rows pulled 70 % towards their class centre: distinct rows of a class now reach a
    centred similarity above 0.75, so a fixed 0.75 groups them; the derived threshold rises with them."""
    cache, planted = planted_cache
    x, y, paths, sha, _ = planted_features()
    true = np.arange(len(x)) // 40  # the class each row was drawn from (row 4 is labelled 1)
    rows = np.r_[0:5, 10 : len(x)]  # not the planted outliers
    centre = np.stack([x[rows][true[rows] == c].mean(axis=0) for c in range(3)])
    x[rows] = centre[true[rows]] + 0.3 * (x[rows] - centre[true[rows]])
    tight = write_cache(tmp_path / "tight.h5", x, y, paths, CLASSES, sha256=sha)
    assert len(audit(tight, threshold=0.75, montages=False).duplicates) > 10
    want = sorted([sorted(planted["exact"]), sorted(planted["near"])])
    thresholds = []
    for path in (cache, tight):
        result = audit(path, montages=False)
        assert result.settings["threshold_derived"]
        assert sorted(map(sorted, _groups(result))) == want
        thresholds.append(result.settings["threshold"])
    assert thresholds[1] > thresholds[0] + 0.1


def test_outlier_groups_are_tight_and_never_chained():
    from headstart.audit import outliers as O

    rng = np.random.default_rng(0)
    dim = 32
    bulk = np.abs(rng.normal(0, 1, (300, dim))) + 3
    far = rng.normal(0, 1, (2, dim)) * 4
    rows = np.concatenate([bulk, far[0] + rng.normal(0, 0.2, (3, dim)), far[1] + rng.normal(0, 0.2, (4, dim))])
    unit = S._normalize(rows)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    top = -np.sort(-sim, axis=1)[:, :50]
    scores, _, _ = O.outlier_scores(top)
    groups = O.outlier_groups(unit, scores)
    assert sorted(sorted(g.rows) for g in groups) == [[300, 301, 302], [303, 304, 305, 306]]
    assert all(g.similarity > 0.9 and g.score > 0.3 for g in groups)
    # a chain: each link close, the two ends not; complete linkage keeps them apart
    linked = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    dist = np.array([[0, 0.1, 0.3], [0.1, 0, 0.2], [0.3, 0.2, 0]])
    assert sorted(map(sorted, O._complete_linkage(linked, dist, 20))) == [[0, 1], [2]]


def test_weak_evidence_keeps_label_issues_out_of_suspects(tmp_path):
    """Labels the features cannot tell apart: a note says so and suspects.txt leaves the issues out."""
    from headstart.audit.findings import suspect_paths

    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (150, 16)) + 3
    y = rng.integers(0, 3, 150)
    paths = [f"c{k}/{i}.jpg" for i, k in enumerate(y)]
    cache = write_cache(tmp_path / "weak.h5", x, y, paths, CLASSES)
    result = audit(cache, tmp_path / "a", montages=False)
    assert result.evidence["weak"] and result.evidence["oof_accuracy"] < 0.8
    assert any(n.startswith("weak evidence") for n in result.notes) and result.label_issues
    suspects = (tmp_path / "a" / "suspects.txt").read_text().splitlines()
    assert suspects == suspect_paths({**result.to_json(), "label_issues": []})
    kept = audit(cache, tmp_path / "b", montages=False, keep_weak=True)
    assert {i["path"] for i in kept.label_issues} <= set(kept.suspects())
    res = runner.invoke(app, ["audit", str(cache), "--no-montages"])
    assert res.exit_code == 0 and "weak evidence" in res.output


def test_strong_evidence_keeps_label_issues_in_suspects(planted_cache):
    cache, planted = planted_cache
    result = audit(cache, montages=False)
    assert not result.evidence["weak"] and planted["flipped"] in result.suspects()


def test_audit_map_and_report_count_the_same_findings(planted_cache, tmp_path):
    from headstart.audit.findings import count_findings

    cache, _ = planted_cache
    res = runner.invoke(app, ["audit", str(cache), "--out", str(tmp_path / "a"), "--no-montages"])
    assert res.exit_code == 0, res.output
    counts = json.loads((tmp_path / "a" / "audit.json").read_text())["counts"]
    assert counts == count_findings(load_audit(tmp_path / "a"))
    assert (
        f"{counts['flagged']} pictures flagged" in res.output
        and f"suspects.txt ({counts['suspects']} paths)" in res.output
    )
    assert len((tmp_path / "a" / "suspects.txt").read_text().splitlines()) == counts["suspects"]
    res = runner.invoke(
        app, ["map", str(cache), "--out", str(tmp_path / "m.png"), "--audit", str(tmp_path / "a"), "--method", "pca"]
    )
    assert res.exit_code == 0 and f"{counts['flagged']} flagged by the audit" in res.output, res.output
    from headstart.audit.report import _audit_section

    page = _audit_section(load_audit(tmp_path / "a"), None)
    for name, key in (("pictures flagged", "flagged"), ("paths in suspects.txt", "suspects")):
        assert re.search(rf"{name}</td>\s*<td[^>]*>{counts[key]}<", page), name


def test_label_issue_scores_rank_where_the_regression_is_overconfident():
    """Weak features, 5 classes, 600 rows of 256 dimensions: the out-of-fold regression gives every top
    issue p(given) < 0.01 (a score of 1.00 each, before); softened and scored by cleanlab, they spread."""
    from headstart.audit import labels as L

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 600)
    x = rng.normal(0, 1, (5, 256))[y] * 0.1 + rng.normal(0, 1, (600, 256))
    raw, _ = L.out_of_fold_proba(x, y, 5)
    assert np.sort(raw[np.arange(600), y])[:20].max() < 0.01  # what made every top score 1.00
    issues = L.find_label_issues(x, y, 5)
    top = issues.scores[:20]
    assert list(top) == sorted(top) and len(set(np.round(top, 2))) >= 8 and top[-1] - top[0] >= 0.1
    assert issues.temperature > 1.5 and issues.accuracy < 0.6
    assert np.all(issues.margins[:20] > 0) and np.all(issues.suggested != y[issues.rows])


def test_a_reviewed_suspects_txt_is_never_overwritten(planted_cache, tmp_path):
    """issue 21, finding 7: a second audit into the same --out kept nothing of the person's review."""
    cache, planted = planted_cache
    out = tmp_path / "a"
    args = ["audit", str(cache), "--out", str(out), "--no-montages"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # an untouched list is ours: replaced
    suspects = out / "suspects.txt"
    reviewed = "".join(line + "\n" for line in suspects.read_text().splitlines() if line != planted["outlier"])
    suspects.write_text(reviewed)  # the person keeps the outlier: its line is deleted
    before = (out / "audit.json").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "changed since" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert suspects.read_text() == reviewed and (out / "audit.json").read_bytes() == before
    with pytest.raises(AuditError, match="changed since"):
        audit(cache, out, montages=False)
    assert suspects.read_text() == reviewed


def test_an_audit_folder_from_before_the_manifest_is_still_replaced(planted_cache, tmp_path):
    cache, _ = planted_cache
    out = tmp_path / "a"
    result = audit(cache, out, montages=False)
    data = json.loads((out / "audit.json").read_text())
    del data["files"]  # as audits wrote it before: plain lines, no SHA-256
    (out / "audit.json").write_text(json.dumps(data))
    (out / "suspects.txt").write_text("".join(p + "\n" for p in result.suspects()))
    audit(cache, out, montages=False)
    (out / "suspects.txt").write_text("mine\n")
    with pytest.raises(AuditError, match="changed since"):
        audit(cache, out, montages=False)


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("dim", [16, 512])  # kept whole, and reduced by the randomized SVD
def test_constant_features_give_a_note_not_a_crash(tmp_path, value, dim):
    y = np.repeat(np.arange(3), 20)
    paths = [f"c{k}/{i}.jpg" for i, k in enumerate(y)]
    cache = write_cache(tmp_path / "c.h5", np.full((len(y), dim), value), y, paths, ("c0", "c1", "c2"))
    res = runner.invoke(app, ["audit", str(cache), "--out", str(tmp_path / "a"), "--no-montages"])
    assert res.exit_code == 0, res.output
    assert "every picture has the same features" in res.output
    assert (tmp_path / "a" / "audit.json").is_file()
