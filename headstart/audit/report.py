"""`headstart report`: one self-contained HTML page of a run or a comparison (and an audit).

The page opens with a summary (the best head, the audit's headline, the command to run next,
`headstart.audit.summary`), then the comparison table, and per run its metrics, learning curves,
confusion matrix, reliability diagram and most confident mistakes as thumbnails, and the audit's
findings when an audit.json is given or lies in the folder. Raw settings and long tables are folded
(``<details>``); only the best run is unfolded. Nothing is loaded from the network: the plots
and thumbnails are embedded as ``data:`` URIs, the style and the one small script inline, and a
Content-Security-Policy forbids any other source. Every string read from the run's files is
escaped (`headstart.audit.html`); the files are data, checked as they are read. Thumbnails come
only from inside the root of a cache the report's runs (or the audit) were made from, never from
a folder that a run.json or an audit.json merely names.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.audit import html as H
from headstart.errors import AuditError, HeadstartError, UnsafeFileError
from headstart.files import read_regular

log = logging.getLogger(__name__)

MISTAKES = 12
MAX_JSON_BYTES = 50 << 20
_HEAD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class ReportResult:
    out: Path
    runs: int
    mistakes: int
    audit: bool
    notes: list[str]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_regular(path, MAX_JSON_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, UnsafeFileError) as err:
        raise AuditError(f"Expected a readable {what}. Received: {path} ({err}).") from None


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise AuditError(f"Expected {path} as written by headstart. Received: a file where {what}.")


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _load_run(run_dir: Path) -> dict[str, Any]:
    """run.json and metrics.json of a run folder, checked for the fields the report shows.

    The folder is first checked as every head command checks it (`headstart.heads.run_reader.read_run`:
    run.json field by field, every file against its SHA-256 in run.json, the head loadable).
    """
    from headstart.heads.run_reader import read_run

    read_run(run_dir)
    info = _read_json(run_dir / "run.json", "run.json")
    _need(isinstance(info, dict), run_dir / "run.json", "the top level is not an object")
    _need(isinstance(info.get("head"), str), run_dir / "run.json", "head is not text")
    names = info.get("class_names")
    _need(
        isinstance(names, list) and all(isinstance(c, str) for c in names),
        run_dir / "run.json",
        "class_names is not a list of text",
    )
    metrics = _read_json(run_dir / "metrics.json", "metrics.json") if (run_dir / "metrics.json").exists() else {}
    _need(isinstance(metrics, dict), run_dir / "metrics.json", "the top level is not an object")
    for split in ("val", "test"):
        m = metrics.get(split, {})
        _need(isinstance(m, dict), run_dir / "metrics.json", f"{split} is not an object")
        for key in ("accuracy", "log_loss", "ece", "roc_auc", "roc_auc_ovr", "top5_accuracy"):
            _need(_number(m.get(key)), run_dir / "metrics.json", f"{split}.{key} is not a number")
        per_class = m.get("per_class", {})
        _need(
            isinstance(per_class, dict)
            and all(isinstance(v, dict) and all(_number(x) for x in v.values()) for v in per_class.values()),
            run_dir / "metrics.json",
            f"{split}.per_class is not a table of numbers",
        )
        cm = m.get("confusion_matrix", [])
        _need(
            isinstance(cm, list) and all(isinstance(r, list) and all(isinstance(v, int) for v in r) for r in cm),
            run_dir / "metrics.json",
            f"{split}.confusion_matrix is not a table of counts",
        )
    return {"dir": run_dir, "info": info, "metrics": metrics}


def _comparison_rows(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = _read_json(folder / "comparison.json", "comparison.json")
    path = folder / "comparison.json"
    _need(isinstance(data, dict) and isinstance(data.get("rows"), list), path, "rows is not a list")
    for row in data["rows"]:
        _need(isinstance(row, dict) and isinstance(row.get("head"), str), path, "a row has no head name")
        _need(
            bool(_HEAD_NAME.match(row["head"])) and row["head"] not in (".", ".."),
            path,
            f"a head name is not a plain name ({row['head']!r})",
        )
        for key in ("val_accuracy", "test_accuracy", "test_log_loss", "fit_seconds"):
            _need(_number(row.get(key)), path, f"{key} is not a number")
    return data["rows"], data


def _cache_root(path: Any) -> Path | None:
    """The resolved root recorded in the cache at ``path``, or None if it is not a readable cache."""
    from headstart.audit.reading import open_checked

    if not isinstance(path, str) or not path:
        return None
    try:
        with open_checked(path) as cache:
            return Path(os.path.realpath(cache.root)) if cache.root else None
    except (HeadstartError, OSError, ValueError):
        return None


def _audit_root(audit: dict[str, Any], runs: list[dict[str, Any]], notes: list[str]) -> Path | None:
    """Where the audit's thumbnails may come from: its ``root`` if that is the root of its own cache
    or of a run's cache (resolved); else None and a note. The root in audit.json is only a claim."""
    claimed = audit.get("root")
    if not isinstance(claimed, str) or not claimed or "\0" in claimed:
        return None
    roots = [_cache_root(audit.get("cache"))] + [_cache_root(r["info"].get("cache", {}).get("path")) for r in runs]
    real = Path(os.path.realpath(claimed))
    if real in roots:
        return real
    notes.append(f"audit thumbnails not shown: its root {claimed} is not the root of its cache or of a run's cache")
    return None


def _mistakes(run_dir: Path, n: int, notes: list[str]) -> list[dict[str, Any]]:
    """The run's most confident test mistakes with JPEG thumbnails; a note instead if unavailable."""
    from headstart.audit.pictures import thumbnail_jpeg
    from headstart.heads.evaluation import misclassified

    try:
        result = misclassified(run_dir, n)
    except (HeadstartError, OSError, ValueError, KeyError) as err:
        notes.append(f"{run_dir.name}: mistakes not shown ({err})")
        return []
    out = []
    for m in result.mistakes:
        jpeg = thumbnail_jpeg(result.root, m.path, 150) if result.root is not None else None
        out.append(
            {
                "path": m.path,
                "true": m.true,
                "predicted": m.predicted,
                "probability": m.probability,
                "thumb": H.data_uri(jpeg, "image/jpeg") if jpeg else None,
            }
        )
    return out


def _run_section(run: dict[str, Any], mistakes: list[dict[str, Any]], open_: bool = True) -> str:
    info, metrics, run_dir = run["info"], run["metrics"], run["dir"]
    names = info["class_names"]
    parts = [
        f'<details class="run" id="run-{H.esc(info["head"])}"{" open" if open_ else ""}>'
        f"<summary><h2>Run: {H.esc(info['head'])}</h2></summary>"
    ]
    cache = info.get("cache") if isinstance(info.get("cache"), dict) else {}
    settings = [
        ("head", info["head"]),
        ("parameters", json.dumps(info.get("params", {}), sort_keys=True)),
        ("chosen on validation", json.dumps(info.get("fitted", {}), sort_keys=True)),
        ("cache", cache.get("path")),
        ("features", f"{cache.get('rows')} x {cache.get('dim')} {cache.get('dtype')}"),
        (
            "extraction",
            ", ".join(f"{k}={v}" for k, v in (cache.get("fingerprint") or {}).items() if v is not None)
            if isinstance(cache.get("fingerprint"), dict)
            else None,
        ),
        ("split", json.dumps(info.get("split", {}), sort_keys=True)),
        ("excluded", len(info["excluded"]) if isinstance(info.get("excluded"), list) else None),
        ("fit seconds", info.get("fit_seconds")),
        ("created", info.get("created")),
    ]
    settings_table = H.table(["setting", "value"], [r for r in settings if r[1] is not None], classes=["", "path"])
    rows = []
    for split in ("val", "test"):
        m = metrics.get(split, {})
        rows.append(
            [
                split,
                m.get("n"),
                m.get("accuracy"),
                m.get("log_loss"),
                m.get("ece"),
                m.get("roc_auc", m.get("roc_auc_ovr", m.get("top5_accuracy"))),
            ]
        )
    parts.append("<h3>Metrics</h3>" + H.table(["split", "n", "accuracy", "log loss", "ECE", "ROC AUC / top-5"], rows))
    parts.append(H.folded("Settings (head, cache, extraction, split)", settings_table))
    test = metrics.get("test", {})
    per_class = test.get("per_class", {})
    if per_class:
        parts.append(
            H.folded(
                "Per class (test)",
                H.table(
                    ["class", "precision", "recall", "F1", "support"],
                    [
                        [c, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support")]
                        for c, v in per_class.items()
                    ],
                    sortable=True,
                ),
            )
        )
    cm = test.get("confusion_matrix", [])
    if cm and len(cm) == len(names) <= 50:
        parts.append(
            H.folded(
                "Confusion matrix (test; rows true, columns predicted)",
                H.table(["true \\ predicted", *names], [[names[i], *row] for i, row in enumerate(cm)]),
            )
        )
    plots = []
    for name, alt in (
        ("curves.png", "learning curves"),
        ("confusion.png", "confusion matrix"),
        ("calibration.png", "reliability diagram"),
    ):
        uri = H.png_file_uri(run_dir / name)
        if uri:
            plots.append(f'<figure><img alt="{H.esc(alt)}" src="{uri}"><figcaption>{H.esc(alt)}</figcaption></figure>')
    if plots:
        parts.append('<h3>Curves, confusion, calibration</h3><div class="plots">' + "".join(plots) + "</div>")
    if mistakes:
        parts.append(
            "<h3>Most confident mistakes (test)</h3>"
            + H.cards(
                mistakes,
                lambda m: (
                    f"{H.esc(m['true'])} → {H.esc(m['predicted'])} ({m['probability']:.2f})"
                    f'<br><span class="note">{H.esc(m["path"])}</span>'
                ),
            )
        )
    parts.append("</details>")
    return "\n".join(parts)


def _audit_section(audit: dict[str, Any], root: Path | None) -> str:
    """The audit's findings; label issues drawn from pictures inside ``root`` (None: no thumbnails)."""
    from headstart.audit.findings import count_findings
    from headstart.audit.pictures import thumbnail_jpeg

    counts = count_findings(audit)  # the counts `audit` and `map` print
    parts = [
        '<h2 id="audit">Audit</h2>',
        H.table(
            ["finding", "count"],
            [
                ["label issues", counts["label_issues"]],
                ["duplicate groups", counts["duplicate_groups"]],
                ["exact duplicate groups", counts["exact_groups"]],
                ["groups across splits (leakage)", counts["leaking_groups"]],
                ["outliers listed", counts["outliers"]],
                ["outlier groups", counts["outlier_groups"]],
                ["pictures flagged", counts["flagged"]],
                ["paths in suspects.txt", counts["suspects"]],
            ],
        ),
    ]
    for note in audit.get("notes", []) if isinstance(audit.get("notes"), list) else []:
        parts.append(f'<p class="note">{H.esc(note)}</p>')
    issues = audit["label_issues"][:20]
    if issues:
        cards = []
        for i in issues:
            jpeg = thumbnail_jpeg(root, i["path"], 150) if root is not None else None
            cards.append({**i, "thumb": H.data_uri(jpeg, "image/jpeg") if jpeg else None})
        parts.append(
            "<h3>Label issues (most suspicious first; quality: cleanlab's label-quality score, "
            "low = likely wrong; margin: p(suggested) − p(given))</h3>"
            + H.cards(
                cards,
                lambda i: (
                    f"{H.esc(i['label'])} → {H.esc(i['suggested'])} quality {i['score']:.2f}"
                    + (f", margin {i['margin']:.2f}" if isinstance(i.get("margin"), (int, float)) else "")
                    + f'<br><span class="note">{H.esc(i["path"])}</span>'
                ),
            )
        )
    if audit["duplicates"]:
        parts.append(
            "<h3>Duplicates</h3>"
            + H.folded(
                f"{len(audit['duplicates']):,} groups (the first 50)",
                H.table(
                    ["pictures", "similarity", "exact", "splits"],
                    [
                        [" | ".join(g["paths"]), g["similarity"], g["exact"], ", ".join(g["splits"])]
                        for g in audit["duplicates"][:50]
                    ],
                    classes=["path"],
                    sortable=True,
                ),
            )
        )
    if audit["outliers"]:
        parts.append(
            "<h3>Outliers</h3>"
            + H.folded(
                f"{min(len(audit['outliers']), 20)} most unusual pictures",
                H.table(
                    ["path", "label", "score"],
                    [[o["path"], o["label"], o["score"]] for o in audit["outliers"][:20]],
                    classes=["path"],
                    sortable=True,
                ),
            )
        )
    if audit.get("outlier_groups"):
        parts.append(
            "<h3>Outlier groups (tight inside, far from their class)</h3>"
            + H.table(
                ["pictures", "labels", "score", "similarity"],
                [
                    [" | ".join(g["paths"]), ", ".join(g.get("labels", [])), g["score"], g["similarity"]]
                    for g in audit["outlier_groups"][:20]
                ],
                classes=["path"],
                sortable=True,
            )
        )
    return "\n".join(parts)


def make_report(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    audit: str | os.PathLike | None = None,
    mistakes: int = MISTAKES,
) -> ReportResult:
    """Write the HTML report of the run or comparison folder ``source`` to ``out``."""
    from headstart.audit.run import AUDIT_JSON, load_audit

    source, out = Path(source), Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise AuditError(f"Expected --out to end in .html. Received: {out}.")
    if not source.is_dir():
        raise AuditError(f"Expected a run or comparison folder. Received: {source} (not a folder).")
    notes: list[str] = []
    if (source / "comparison.json").is_file():
        rows, comparison = _comparison_rows(source)
        runs = [_load_run(source / r["head"]) for r in rows if (source / r["head"] / "run.json").is_file()]
        missing = [r["head"] for r in rows if not (source / r["head"] / "run.json").is_file()]
        if missing:
            notes.append(f"runs not found in {source}: {', '.join(missing)}")
        title = f"headstart comparison: {source.name}"
    elif (source / "run.json").is_file():
        runs, rows, comparison = [_load_run(source)], None, None
        title = f"headstart run: {source.name}"
    else:
        raise AuditError(
            f"Expected a folder made by headstart train or compare (run.json or comparison.json). Received: {source}."
        )
    audit_data = None
    audit_path = (
        Path(audit) if audit is not None else (source / AUDIT_JSON if (source / AUDIT_JSON).is_file() else None)
    )
    if audit_path is not None:
        audit_data = load_audit(audit_path)

    from headstart.audit.summary import best_run, summary_section

    cache = comparison.get("cache") if comparison is not None else (runs[0]["info"].get("cache") or {}).get("path")
    audit_dir = None if audit_path is None else (audit_path if audit_path.is_dir() else audit_path.parent)
    body = [f"<h1>{H.esc(title)}</h1>"]
    if runs:
        body.append(summary_section(source, runs, cache if isinstance(cache, str) else None, audit_data, audit_dir))
    if rows is not None:
        body.append(
            "<h2>Comparison</h2>"
            + H.table(
                ["head", "val accuracy", "test accuracy", "test log loss", "fit s"],
                [
                    [
                        r["head"],
                        r.get("val_accuracy"),
                        r.get("test_accuracy"),
                        r.get("test_log_loss"),
                        r.get("fit_seconds"),
                    ]
                    for r in rows
                ],
                sortable=True,
                table_id="comparison",
            )
        )
        split = comparison.get("split") if isinstance(comparison.get("split"), dict) else {}
        body.append(
            f'<p class="note">cache {H.esc(comparison.get("cache"))}; split {H.esc(json.dumps(split.get("counts")))}'
            "</p>"
        )
        uri = H.png_file_uri(source / "comparison.png")
        if uri:
            body.append(f'<div class="plots"><img alt="comparison" src="{uri}"></div>')
    n_mistakes, best = 0, best_run(runs) if runs else None
    for run in runs:
        shown = _mistakes(run["dir"], mistakes, notes) if mistakes > 0 else []
        n_mistakes += len(shown)
        body.append(_run_section(run, shown, open_=run is best))
    if audit_data is not None:
        body.append(_audit_section(audit_data, _audit_root(audit_data, runs, notes)))
    if notes:
        body.append("<h2>Notes</h2>" + "".join(f'<p class="note warn">{H.esc(n)}</p>' for n in notes))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(H.page(title, "\n".join(body), H.SORT_SCRIPT), encoding="utf-8")
    os.replace(tmp, out)
    return ReportResult(out, len(runs), n_mistakes, audit_data is not None, notes)


__all__ = ["ReportResult", "make_report"]
