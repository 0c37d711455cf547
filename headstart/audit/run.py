"""`headstart audit`: find duplicates, split leakage, label issues and outliers in a cache, and write them.

Reads only the cache (and, for a version-1 cache, the picture files to hash them). Steps, each
streaming the features a block at a time (`headstart.audit.space`): content hashes → centred
and reduced rows → nearest neighbours → duplicate groups and leakage → out-of-fold label issues →
outlier ranking. ``out`` gets, each file written beside and renamed into place::

    audit.json         every finding (paths as stored in the cache), the settings and notes
    suspects.txt       one path a line: label issues, all but one picture of each duplicate
                       group, the listed outliers (for `--exclude-list` once reviewed)
    label_issues.png, duplicates.png, outliers.png   montages of the top findings
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.audit import duplicates as D
from headstart.audit import labels as L
from headstart.audit import outliers as O
from headstart.audit import space as S
from headstart.audit.hashes import content_hashes
from headstart.audit.reading import open_checked
from headstart.errors import AuditError, UnsafeFileError
from headstart.files import read_regular
from headstart.heads.split import SPLITS, SplitSpec, assign

log = logging.getLogger(__name__)

AUDIT_JSON = "audit.json"
SUSPECTS_TXT = "suspects.txt"
AUDIT_FORMAT = 1
NEIGHBOURS = 10
TOP_OUTLIERS = 20
MONTAGE_ITEMS = 20
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
    out: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def leakage(self) -> list[dict[str, Any]]:
        return [g for g in self.duplicates if g["leakage"]]

    def suspects(self) -> list[str]:
        """Paths for a person to review, each once: label issues, duplicates but one a group, outliers."""
        seen: dict[str, None] = {}
        for item in self.label_issues:
            seen.setdefault(item["path"], None)
        for group in self.duplicates:
            keep = group["splits"].index("train") if "train" in group["splits"] else 0
            for i, p in enumerate(group["paths"]):
                if i != keep:
                    seen.setdefault(p, None)
        for item in self.outliers:
            seen.setdefault(item["path"], None)
        return list(seen)

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
        }


def audit(
    cache_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    threshold: float = D.THRESHOLD,
    folds: int = L.FOLDS,
    neighbours: int = NEIGHBOURS,
    top_outliers: int = TOP_OUTLIERS,
    dims: int = S.DIMS,
    split: SplitSpec = SplitSpec(),
    seed: int = 0,
    montages: bool = True,
) -> AuditResult:
    """Audit the cache at ``cache_path``; write the results into the folder ``out`` if given."""
    if not 0 < threshold <= 1:
        raise AuditError(f"Expected a similarity threshold in (0, 1]. Received: {threshold}.")
    if folds < 2:
        raise AuditError(f"Expected at least 2 folds. Received: {folds}.")
    if neighbours < 1 or top_outliers < 0 or dims < 2:
        raise AuditError(
            f"Expected --neighbours >= 1, --outliers >= 0 and --dims >= 2. Received: {neighbours}, {top_outliers}, {dims}."
        )
    cache_path = Path(cache_path)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    with open_checked(cache_path) as cache:
        n = len(cache)
        if n < 3:
            raise AuditError(f"Expected a cache of at least 3 pictures to audit. Received: {cache_path} ({n} rows).")
        paths, labels, class_names = cache.paths, cache.labels, cache.class_names
        schema_version = cache.schema_version
        base = Path(root) if root is not None else Path(cache.root or ".")
        hashes, notes = content_hashes(paths, cache.sha256, base)
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
        near = S.neighbours(space, O.K, threshold - (D.SEARCH_MARGIN if reduced else 0.0), per_row=neighbours)
        lap("neighbours")
        pairs, sims = near.pairs, near.pair_sim
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
    scores = O.outlier_scores(near.top_sim)
    top = O.rank_outliers(scores, min(top_outliers, n))
    lap("outliers")

    result = AuditResult(
        cache=cache_path,
        root=str(base),
        rows=n,
        class_names=list(class_names),
        label_issues=[
            {"path": paths[r], "label": class_names[labels[r]], "suggested": class_names[s], "score": float(sc)}
            for r, s, sc in zip(issues.rows, issues.suggested, issues.scores)
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
        outliers=[{"path": paths[r], "label": class_names[labels[r]], "score": float(scores[r])} for r in top],
        notes=notes,
        settings={
            "threshold": threshold,
            "similarity": "cosine of centred features (duplicates), of raw features (outliers)",
            "neighbours": neighbours,
            "outlier_k": O.K,
            "folds": issues.folds,
            "C": issues.C,
            "dims": int(space.coords.shape[1]),
            "explained_variance": round(space.explained, 4),
            "split": split.to_dict(),
            "seed": seed,
            "schema_version": schema_version,
        },
        seconds=seconds,
    )
    if out is not None:
        write(result, Path(out), montages=montages)
    return result


def _similarity_text(group: dict[str, Any]) -> str:
    return "exact" if group["exact"] else f"{group['similarity']:.3f}"


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write(result: AuditResult, out: Path, montages: bool = True) -> list[Path]:
    """Write audit.json, suspects.txt and the montages into ``out`` (created if needed)."""
    from headstart.audit.pictures import montage

    if out.exists() and not out.is_dir():
        raise AuditError(f"Expected --out to be a folder. Received: {out} (a file).")
    out.mkdir(parents=True, exist_ok=True)
    files = [
        _write_text(out / AUDIT_JSON, json.dumps(result.to_json(), indent=1) + "\n"),
        _write_text(out / SUSPECTS_TXT, "".join(p + "\n" for p in result.suspects())),
    ]
    if montages:
        root = Path(result.root)
        drawings = {
            "label_issues.png": [
                (i["path"], f"{i['label']} → {i['suggested']} ({i['score']:.2f})")
                for i in result.label_issues[:MONTAGE_ITEMS]
            ],
            "duplicates.png": [
                (p, f"group {k + 1} {_similarity_text(g)} {s}")
                for k, g in enumerate(result.duplicates[: MONTAGE_ITEMS // 2])
                for p, s in list(zip(g["paths"], g["splits"]))[:2]
            ],
            "outliers.png": [(i["path"], f"{i['label']} ({i['score']:.2f})") for i in result.outliers[:MONTAGE_ITEMS]],
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
    return data
