"""The opening of `headstart report`: the best head, the audit's headline and the command to run next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from headstart.audit import html as H


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the best validation accuracy (ties: lower validation log loss); never chosen on test."""

    def key(run: dict[str, Any]) -> tuple[float, float]:
        val = run["metrics"].get("val", {})
        acc, loss = val.get("accuracy"), val.get("log_loss")
        return (-(acc if acc is not None else -1.0), loss if loss is not None else float("inf"))

    return min(runs, key=key)


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def headline(audit: dict[str, Any]) -> str:
    """One sentence of the audit's findings."""
    dups = audit["duplicates"]
    leaks = sum(bool(g.get("leakage")) for g in dups)
    return (
        f"{len(audit['label_issues']):,} label issues, {len(dups):,} duplicate groups "
        f"({leaks:,} across splits), {len(audit['outliers']):,} outliers listed"
    )


def next_command(
    source: Path, best: dict[str, Any], cache: str | None, audit: dict[str, Any] | None, audit_dir: Path | None
) -> tuple[str, str]:
    """(why, command): what a person would most likely run after reading this report."""
    run_dir = best["dir"]
    cache_arg = _q(cache) if cache else "CACHE"
    if audit is None:
        return (
            "No audit in this report yet: look for label issues, duplicates and leakage first.",
            f"headstart audit {cache_arg} --out audit/ && "
            f"headstart report {_q(source)} --audit audit/ --out report.html",
        )
    found = audit["label_issues"] or audit["duplicates"] or audit["outliers"]
    if found and audit_dir is not None:
        return (
            "Review the audit's suspects, then train again without them and compare.",
            f"headstart compare {cache_arg} --exclude-list {_q(audit_dir / 'suspects.txt')} --out runs/clean",
        )
    return (
        "Ship the best head: one model from pixels to probabilities.",
        f"headstart export {_q(run_dir)} --out {_q(run_dir.name)}.keras",
    )


def summary_section(
    source: Path,
    runs: list[dict[str, Any]],
    cache: str | None,
    audit: dict[str, Any] | None,
    audit_dir: Path | None,
) -> str:
    """The report's first screen: best head and its test numbers, the audit's headline, the next command."""
    best = best_run(runs)
    info, metrics = best["info"], best["metrics"]
    val, test = metrics.get("val", {}), metrics.get("test", {})
    head = info["head"]
    label, chosen = ("Best head", f" (best of {len(runs)} on validation accuracy)") if len(runs) > 1 else ("Head", "")
    items = [
        f'<li><b>{label}: <a href="#run-{H.esc(head)}">{H.esc(head)}</a></b>{H.esc(chosen)}: '
        f"test accuracy <b>{H.fmt(test.get('accuracy'))}</b>, log loss {H.fmt(test.get('log_loss'))}, "
        f"ECE {H.fmt(test.get('ece'))} on {H.esc(H.fmt(test.get('n')))} pictures "
        f"(validation accuracy {H.fmt(val.get('accuracy'))}).</li>"
    ]
    if audit is not None:
        items.append(f'<li><b>Audit:</b> <a href="#audit">{H.esc(headline(audit))}</a>.</li>')
    else:
        items.append("<li><b>Audit:</b> none included.</li>")
    why, command = next_command(source, best, cache, audit, audit_dir)
    items.append(f"<li><b>Next:</b> {H.esc(why)}<br><code>{H.esc(command)}</code></li>")
    return '<section id="summary"><h2>Summary</h2><ul class="summary">' + "".join(items) + "</ul></section>"
