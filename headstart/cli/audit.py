"""The data commands of the CLI (audit, map, report): parse, call `headstart.audit`, print.

`register(app)` adds them to a typer app. Library imports happen inside each command so that
``headstart --help`` stays fast; a `HeadstartError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from headstart.cli.console import cli_errors, out_console, say

SHOWN = 10


def _table(title: str, headers: list[str], rows: list[list[str]]):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for k, h in enumerate(headers):
        t.add_column(h, justify="left" if k == 0 or h in ("label", "suggested", "splits") else "right", overflow="fold")
    for row in rows:
        t.add_row(*[Text(str(v)) for v in row])  # paths may hold [ and ]: no markup
    return t


def audit_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for audit.json, suspects.txt and montages. A suspects.txt edited since an audit wrote it "
        "(a reviewed list) is never replaced: the audit is refused, and nothing is written.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print audit.json on stdout instead of tables."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Centred cosine similarity of near duplicates (default: derived from the cache)."
    ),
    folds: int = typer.Option(5, "--folds", help="Folds of the out-of-sample logistic regression."),
    outliers: int = typer.Option(20, "--outliers", help="How many outliers to list."),
    root: Optional[Path] = typer.Option(None, "--root", help="Where the pictures are now (default: the cache's root)."),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="The split whose leakage to check (as train/compare)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of the folds."),
    no_montages: bool = typer.Option(False, "--no-montages", help="Skip the PNG montages."),
    keep_weak: bool = typer.Option(
        False, "--keep-weak", help="List label issues in suspects.txt even when they are weak evidence."
    ),
) -> None:
    """Find duplicates, split leakage, label issues and outliers from the cached features.

    Example: headstart audit pets-vgg16-fc2.h5 --out audit/   (then: train ... --exclude-list audit/suspects.txt)
    """
    from headstart.audit import audit
    from headstart.heads.split import SplitSpec

    with cli_errors():
        result = audit(
            cache,
            out,
            root=root,
            threshold=threshold,
            folds=folds,
            top_outliers=outliers,
            split=SplitSpec.parse(split, seed),
            seed=seed,
            montages=not no_montages,
            keep_weak=keep_weak,
        )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=1))
        return
    from headstart.audit.findings import count_findings

    counts = count_findings(result.to_json())
    say(
        f"{cache}: {result.rows:,} pictures; {counts['label_issues']:,} label issues, "
        f"{counts['duplicate_groups']:,} duplicate groups ({counts['exact_groups']:,} exact, "
        f"{counts['leaking_groups']:,} across splits; threshold {result.settings['threshold']:.3f}"
        f"{', derived' if result.settings.get('threshold_derived') else ''}), {counts['outliers']:,} outliers listed, "
        f"{counts['outlier_groups']:,} outlier groups; {counts['flagged']:,} pictures flagged; "
        f"{sum(result.seconds.values()):.1f} s"
    )
    for note in result.notes:
        say(f"note: {note}")
    if result.label_issues:
        out_console.print(
            _table(
                f"label issues (top {min(SHOWN, len(result.label_issues))} of {len(result.label_issues):,}; "
                "quality: low = likely wrong; margin: p(suggested) - p(given))",
                ["path", "label", "suggested", "quality", "margin"],
                [
                    [i["path"], i["label"], i["suggested"], f"{i['score']:.3f}", f"{i.get('margin', 0):.3f}"]
                    for i in result.label_issues[:SHOWN]
                ],
            )
        )
    if result.duplicates:
        out_console.print(
            _table(
                f"duplicates (top {min(SHOWN, len(result.duplicates))} of {len(result.duplicates):,} groups)",
                ["paths", "similarity", "exact", "splits"],
                [
                    [
                        "\n".join(g["paths"]),
                        f"{g['similarity']:.3f}",
                        "yes" if g["exact"] else "no",
                        ", ".join(g["splits"]) + (" LEAK" if g["leakage"] else ""),
                    ]
                    for g in result.duplicates[:SHOWN]
                ],
            )
        )
    if result.outliers:
        out_console.print(
            _table(
                f"outliers (top {min(SHOWN, len(result.outliers))})",
                ["path", "label", "score"],
                [[o["path"], o["label"], f"{o['score']:.3f}"] for o in result.outliers[:SHOWN]],
            )
        )
    if result.outlier_groups:
        out_console.print(
            _table(
                f"outlier groups ({len(result.outlier_groups):,}: tight inside, far from their class)",
                ["paths", "labels", "score", "similarity"],
                [
                    ["\n".join(g["paths"]), ", ".join(g["labels"]), f"{g['score']:.3f}", f"{g['similarity']:.3f}"]
                    for g in result.outlier_groups[:SHOWN]
                ],
            )
        )
    if result.out is not None:
        say(f"audit.json, suspects.txt ({counts['suspects']:,} paths) and montages are in {result.out}")


def map_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    out: Path = typer.Option(..., "--out", "-o", help="map.png, or map.html (thumbnails on hover)."),
    audit: Optional[Path] = typer.Option(None, "--audit", help="An audit.json (or its folder) whose findings to mark."),
    method: str = typer.Option("auto", "--method", help="auto (umap if installed, else tsne), tsne, umap or pca."),
    max_points: int = typer.Option(5000, "--max-points", help="Draw at most this many pictures (a seeded sample)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Where the pictures are now (HTML thumbnails)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and the projection."),
) -> None:
    """Draw the features in 2-D, one colour a class, misclassified and flagged pictures marked.

    Example: headstart map pets-vgg16-fc2.h5 --out pets-map.html --audit audit/
    """
    from headstart.audit import load_audit
    from headstart.audit.projection import make_map

    with cli_errors():
        findings = load_audit(audit) if audit is not None else None
        result = make_map(cache, out, audit=findings, method=method, max_points=max_points, root=root, seed=seed)
    say(
        f"{result.points:,} of {result.rows:,} pictures drawn ({result.method}); {result.misclassified:,} "
        f"misclassified out of fold, {result.flagged:,} flagged by the audit; map written to {result.out}"
    )


def report_cmd(
    source: Path = typer.Argument(..., help="A run folder (headstart train) or a comparison folder (compare)."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write."),
    audit: Optional[Path] = typer.Option(None, "--audit", help="An audit.json (or its folder) to include."),
    mistakes: int = typer.Option(12, "--mistakes", help="Most confident test mistakes to show per run (0: none)."),
) -> None:
    """Write one self-contained HTML page that opens with a summary (best head, the audit's headline, the next
    command), then the comparison, curves, confusion, calibration, mistakes and audit; settings folded.

    Example: headstart report runs/compare --audit audit/ --out report.html
    """
    from headstart.audit.report import make_report

    with cli_errors():
        result = make_report(source, out, audit=audit, mistakes=mistakes)
    for note in result.notes:
        say(f"note: {note}")
    say(
        f"Report of {result.runs} run{'s' if result.runs != 1 else ''} ({result.mistakes} mistakes shown"
        f"{', audit included' if result.audit else ''}) written to {result.out}"
    )


def register(app: typer.Typer) -> None:
    """Add audit, map and report to ``app``."""
    app.command("audit")(audit_cmd)
    app.command("map")(map_cmd)
    app.command("report")(report_cmd)
