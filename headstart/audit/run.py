"""`headstart audit`: find duplicates, split leakage, label issues and outliers in a cache, and write them.

Reads only the cache (and, for a version-1 cache, the picture files to hash them). Steps, each
streaming the features a block at a time (`headstart.audit.space`): content hashes → centred
and reduced rows → nearest neighbours → duplicate groups and leakage → out-of-fold label issues →
outlier ranking. ``out`` gets, each file written beside and renamed into place::

    audit.json         every finding (paths as stored in the cache), the settings, notes and counts,
                       and ``files``: the SHA-256 of the suspects.txt written beside it
    suspects.txt       one path a line: label issues (unless the evidence is weak, see below), all
                       but one picture of each duplicate group, the listed outliers and outlier
                       groups (for `--exclude-list` once reviewed; its format:
                       `headstart.exclude_list.format_exclude_list`)
    label_issues.png, duplicates.png, outliers.png   montages of the top findings

Weak evidence: when the out-of-fold accuracy is below `WEAK_ACCURACY` or label issues are more than
`WEAK_SHARE` of the pictures, the label issues are mostly the features' confusion, not wrong labels:
a note says so and suspects.txt leaves them out (``keep_weak=True`` keeps them).
`headstart.audit.findings` is the one way audit, map and report count findings.

A suspects.txt that changed since headstart wrote it (a list a person reviewed) is never
replaced: the audit is refused before any work, and nothing in ``out`` is touched.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.audit import duplicates as D
from headstart.audit import labels as L
from headstart.audit import outliers as O
from headstart.audit import space as S
from headstart.audit.findings import count_findings, suspect_paths
from headstart.audit.hashes import content_hashes
from headstart.audit.reading import by_picture, open_checked
from headstart.audit.suspects import SUSPECTS_TXT, check_out, sha256
from headstart.errors import AuditError, UnsafeFileError
from headstart.exclude_list import format_exclude_list
from headstart.files import read_regular
from headstart.heads.split import SPLITS, SplitSpec, assign

log = logging.getLogger(__name__)

AUDIT_JSON = "audit.json"
AUDIT_FORMAT = 2
NEIGHBOURS = 10
TOP_OUTLIERS = 20
MONTAGE_ITEMS = 20
WEAK_ACCURACY = 0.8
"""Below this out-of-fold accuracy (of the audit's logistic regression) label issues are weak evidence."""
WEAK_SHARE = 0.1
"""Label issues on more than this share of the pictures are weak evidence."""
MAX_AUDIT_BYTES = 256 << 20  # an audit.json of 1,000,000 findings is ~200 MB


@dataclass
class AuditResult:
    """Every finding of one audit; `to_json` is the content of audit.json."""

    cache: Path
    root: str
    rows: int
    class_names: list[str]
    label_issues: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    notes: list[str]
    settings: dict[str, Any]
    seconds: dict[str, float]
    outlier_groups: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def leakage(self) -> list[dict[str, Any]]:
        return [g for g in self.duplicates if g["leakage"]]

    def suspects(self) -> list[str]:
        """`suspect_paths` of this audit."""
        return suspect_paths(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": AUDIT_FORMAT,
            "cache": str(self.cache),
            "root": self.root,
            "rows": self.rows,
            "class_names": self.class_names,
            "settings": self.settings,
            "notes": self.notes,
            "seconds": self.seconds,
            "label_issues": self.label_issues,
            "duplicates": self.duplicates,
            "outliers": self.outliers,
            "outlier_groups": self.outlier_groups,
            "evidence": self.evidence,
            "counts": count_findings(
                {
                    "label_issues": self.label_issues,
                    "duplicates": self.duplicates,
                    "outliers": self.outliers,
                    "outlier_groups": self.outlier_groups,
                    "evidence": self.evidence,
                }
            ),
        }


def audit(
    cache_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    threshold: float | None = D.THRESHOLD,
    folds: int = L.FOLDS,
    neighbours: int = NEIGHBOURS,
    top_outliers: int = TOP_OUTLIERS,
    dims: int = S.DIMS,
    split: SplitSpec = SplitSpec(),
    seed: int = 0,
    montages: bool = True,
    keep_weak: bool = False,
) -> AuditResult:
    """Audit the cache at ``cache_path``; write the results into the folder ``out`` if given.

    ``threshold`` None derives the near-duplicate threshold from the cache (`duplicates.derive_threshold`).
    ``keep_weak`` keeps label issues in suspects.txt even when they are weak evidence.
    """
    if threshold is not None and not 0 < threshold <= 1:
        raise AuditError(f"Expected a similarity threshold in (0, 1]. Received: {threshold}.")
    if folds < 2:
        raise AuditError(f"Expected at least 2 folds. Received: {folds}.")
    if neighbours < 1 or top_outliers < 0 or dims < 2:
        raise AuditError(
            f"Expected --neighbours >= 1, --outliers >= 0 and --dims >= 2. Received: {neighbours}, {top_outliers}, {dims}."
        )
    cache_path = Path(cache_path)
    if out is not None:
        check_out(
            Path(out), AUDIT_JSON, MAX_AUDIT_BYTES
        )  # before the work: a reviewed suspects.txt refuses the audit at once
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    with open_checked(cache_path) as opened:
        cache = by_picture(opened)
        n = len(cache)
        if n < 3:
            raise AuditError(f"Expected a cache of at least 3 pictures to audit. Received: {cache_path} ({n} rows).")
        paths, labels, class_names = cache.paths, np.asarray(cache.labels), cache.class_names
        schema_version = cache.schema_version
        base = Path(root) if root is not None else Path(cache.root or ".")
        hashes, notes = content_hashes(paths, cache.sha256, base)
        if cache is not opened:
            notes.append(
                f"{len(opened):,} rows are {n:,} pictures and their mirrors: each picture is the mean of its two"
            )
        lap("hashes")
        space = S.reduce(cache, dims=dims, seed=seed)
        if space.constant:
            notes.append(
                "every picture has the same features: the backbone gives one answer whatever the picture "
                "(check its weights and layer); duplicates, label issues and outliers cannot be told apart"
            )
        lap("reduce")
        # Centred cosine tells copies from look-alikes; raw cosine tells a picture unlike any
        # other (centring pulls such a row towards the crowd). Both come from one pass.
        reduced = space.components is not None
        margin = D.SEARCH_MARGIN if reduced else 0.0
        cut = (threshold if threshold is not None else D.SEARCH_FLOOR) - margin
        near = S.neighbours(space, O.neighbour_count(n), cut, per_row=neighbours, labels=labels)
        lap("neighbours")
        derived = threshold is None
        if derived:
            threshold = D.derive_threshold(near.nearest)
        pairs, sims = near.pairs, near.pair_sim
        keep = sims >= threshold - margin
        pairs, sims = pairs[keep], sims[keep]
        if reduced:  # confirmed on the full rows
            sims = S.exact_similarity(cache, space.mean, pairs)
        keep = sims >= threshold
        pairs, sims = pairs[keep], sims[keep]
        codes = assign(paths, split)
        groups = D.find_duplicates(hashes, pairs, sims, codes)
        lap("duplicates")
    issues = L.find_label_issues(space.coords, labels, len(class_names), folds=folds, seed=seed)
    if issues.note:
        notes.append(issues.note)
    lap("label_issues")
    scores, overall, within = O.outlier_scores(near.top_sim, near.class_sim, labels)
    top = O.rank_outliers(scores, min(top_outliers, n))
    clusters = O.outlier_groups(space.unit, scores)
    lap("outliers")

    evidence = _evidence(issues, n, keep_weak)
    if evidence.get("weak"):
        notes.append(evidence["note"])
    result = AuditResult(
        cache=cache_path,
        root=str(base),
        rows=n,
        class_names=list(class_names),
        label_issues=[
            {
                "path": paths[r],
                "label": class_names[labels[r]],
                "suggested": class_names[s],
                "score": round(float(sc), 6),
                "margin": round(float(m), 6),
                "p_given": round(float(g), 6),
            }
            for r, s, sc, m, g in zip(
                issues.rows,
                issues.suggested,
                issues.scores,
                issues.margins if issues.margins is not None else np.zeros(len(issues.rows)),
                issues.given if issues.given is not None else np.zeros(len(issues.rows)),
            )
        ],
        duplicates=[
            {
                "paths": [paths[r] for r in g.rows],
                "similarity": round(float(g.similarity), 6),
                "exact": g.exact,
                "splits": g.splits,
                "leakage": g.leakage,
            }
            for g in groups
        ],
        outliers=[
            {
                "path": paths[r],
                "label": class_names[labels[r]],
                "score": round(float(scores[r]), 6),
                "score_all": round(float(overall[r]), 6),
                "score_class": round(float(within[r] if within is not None else overall[r]), 6),
            }
            for r in top
        ],
        outlier_groups=[
            {
                "paths": [paths[r] for r in g.rows],
                "labels": [class_names[labels[r]] for r in g.rows],
                "score": round(g.score, 6),
                "similarity": round(g.similarity, 6),
            }
            for g in clusters
        ],
        evidence=evidence,
        notes=notes,
        settings={
            "threshold": round(float(threshold), 6),
            "threshold_derived": derived,
            "similarity": "cosine of centred features (duplicates), of raw features (outliers)",
            "neighbours": neighbours,
            "outlier_k": O.neighbour_count(n),
            "outlier_k_class": {
                class_names[c]: O.neighbour_count(int(k)) for c, k in enumerate(np.bincount(labels)) if k
            },
            "label_quality": L.METHOD,
            "temperature": None if issues.temperature is None else round(issues.temperature, 4),
            "folds": issues.folds,
            "C": issues.C,
            "dims": int(space.coords.shape[1]),
            "explained_variance": round(space.explained, 4),
            "split": split.to_dict(),
            "seed": seed,
            "schema_version": schema_version,
            "views": "mean of picture and mirror" if cache is not opened else "none",
        },
        seconds=seconds,
    )
    if out is not None:
        write(result, Path(out), montages=montages)
    return result


def _evidence(issues: L.LabelIssues, n: int, keep_weak: bool) -> dict[str, Any]:
    """How far the label issues can be trusted: out-of-fold accuracy, share flagged, and the verdict."""
    if issues.accuracy is None:
        return {}
    share = len(issues.rows) / max(n, 1)
    reasons = []
    if issues.accuracy < WEAK_ACCURACY:
        reasons.append(f"out-of-fold accuracy {issues.accuracy:.2f} is below {WEAK_ACCURACY:.2f}")
    if share > WEAK_SHARE:
        reasons.append(
            f"{len(issues.rows):,} label issues are {100 * share:.0f} % of the pictures (over {100 * WEAK_SHARE:.0f} %)"
        )
    evidence: dict[str, Any] = {
        "oof_accuracy": round(issues.accuracy, 4),
        "issue_share": round(share, 4),
        "weak": bool(reasons),
        "kept": bool(reasons) and keep_weak,
    }
    if reasons:
        evidence["note"] = (
            f"weak evidence: {' and '.join(reasons)}; the features tell the classes apart too poorly for "
            "label issues to mean wrong labels, so most are the features' confusion. "
            + (
                "They are in suspects.txt (--keep-weak)."
                if keep_weak
                else "suspects.txt leaves them out (--keep-weak keeps them)."
            )
        )
    return evidence


def _similarity_text(group: dict[str, Any]) -> str:
    return "exact" if group["exact"] else f"{group['similarity']:.3f}"


def _write_text(path: Path, text: str) -> Path:
    return _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write(result: AuditResult, out: Path, montages: bool = True) -> list[Path]:
    """Write audit.json, suspects.txt and the montages into ``out`` (created if needed); refused
    when ``out`` holds a suspects.txt that changed since an audit wrote it (see `check_out`)."""
    from headstart.audit.pictures import montage

    check_out(out, AUDIT_JSON, MAX_AUDIT_BYTES)
    out.mkdir(parents=True, exist_ok=True)
    suspects = format_exclude_list(result.suspects()).encode("utf-8")
    record = {**result.to_json(), "files": {SUSPECTS_TXT: sha256(suspects)}}
    files = [
        _write_text(out / AUDIT_JSON, json.dumps(record, indent=1) + "\n"),
        _write_bytes(out / SUSPECTS_TXT, suspects),
    ]
    if montages:
        root = Path(result.root)
        drawings = {
            "label_issues.png": [
                (i["path"], f"{i['label']} → {i['suggested']} q {i['score']:.2f} m {i.get('margin', 0):.2f}")
                for i in result.label_issues[:MONTAGE_ITEMS]
            ],
            "duplicates.png": [
                (p, f"group {k + 1} {_similarity_text(g)} {s}")
                for k, g in enumerate(result.duplicates[: MONTAGE_ITEMS // 2])
                for p, s in list(zip(g["paths"], g["splits"]))[:2]
            ],
            "outliers.png": [(i["path"], f"{i['label']} ({i['score']:.2f})") for i in result.outliers[:MONTAGE_ITEMS]]
            + [
                (p, f"group {k + 1} ({g['score']:.2f})")
                for k, g in enumerate(result.outlier_groups[:3])
                for p in g["paths"][:5]
            ],
        }
        for name, items in drawings.items():
            if items:
                tmp = out / f".{name}.{os.getpid()}.tmp.png"
                montage(items, root, tmp, columns=4 if name == "duplicates.png" else 5)
                os.replace(tmp, out / name)
                files.append(out / name)
    result.out, result.files = out, files
    return files


def load_audit(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an audit.json (a file or the folder holding it); what `report` and `map` use."""
    path = Path(path)
    if path.is_dir():
        path = path / AUDIT_JSON
    try:
        data = json.loads(read_regular(path, MAX_AUDIT_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, UnsafeFileError) as err:
        raise AuditError(f"Expected an audit.json written by headstart audit. Received: {path} ({err}).") from None
    try:
        if not isinstance(data, dict):
            raise TypeError("not an object")
        for key, fields in (
            ("label_issues", ("path", "label", "suggested", "score")),
            ("duplicates", ("paths", "similarity", "exact", "splits")),
            ("outliers", ("path", "label", "score")),
            ("outlier_groups", ("paths", "score")),
        ):
            items = data.get(key, [])
            if not isinstance(items, list):
                raise TypeError(f"{key} is not a list")
            for item in items:
                if not isinstance(item, dict) or any(f not in item for f in fields):
                    raise TypeError(f"an entry of {key} lacks one of {', '.join(fields)}")
                for f in ("path", "label", "suggested"):
                    if f in item and not isinstance(item[f], str):
                        raise TypeError(f"{key}.{f} is not text")
                if "score" in item and not isinstance(item["score"], (int, float)):
                    raise TypeError(f"{key}.score is not a number")
                if "paths" in item and not (
                    isinstance(item["paths"], list) and all(isinstance(p, str) for p in item["paths"])
                ):
                    raise TypeError("duplicates.paths is not a list of text")
                if "splits" in item and not (
                    isinstance(item["splits"], list) and all(s in SPLITS for s in item["splits"])
                ):
                    raise TypeError(f"duplicates.splits holds a split other than {', '.join(SPLITS)}")
    except TypeError as err:
        raise AuditError(f"Expected an audit.json written by headstart audit. Received: {path} ({err}).") from None
    data.setdefault("label_issues", [])
    data.setdefault("duplicates", [])
    data.setdefault("outliers", [])
    data.setdefault("outlier_groups", [])
    data.setdefault("evidence", {})
    return data
