"""One way to count an audit's findings: what suspects.txt lists, what is flagged, and the counts.

`audit`, `map` and `report` all count from an audit.json through these functions, so the three
print the same numbers for the same findings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["count_findings", "flags_by_path", "suspect_paths"]


def suspect_paths(data: dict[str, Any]) -> list[str]:
    """Paths for a person to review, each once: label issues (not when ``evidence.weak`` and not
    ``evidence.kept``), duplicates but one a group (the one in train kept), outliers, outlier groups."""
    seen: dict[str, None] = {}
    evidence = data.get("evidence") or {}
    if not evidence.get("weak") or evidence.get("kept"):
        for item in data.get("label_issues", []):
            seen.setdefault(item["path"], None)
    for group in data.get("duplicates", []):
        keep = group["splits"].index("train") if "train" in group["splits"] else 0
        for i, p in enumerate(group["paths"]):
            if i != keep:
                seen.setdefault(p, None)
    for item in data.get("outliers", []):
        seen.setdefault(item["path"], None)
    for group in data.get("outlier_groups", []):
        for p in group["paths"]:
            seen.setdefault(p, None)
    return list(seen)


def flags_by_path(data: dict[str, Any]) -> dict[str, list[str]]:
    """Every flagged picture and what flagged it (all members of a duplicate group are flagged)."""
    flags: dict[str, list[str]] = {}
    for item in data.get("label_issues", []):
        flags.setdefault(item["path"], []).append(f"label issue: {item['label']} → {item['suggested']}")
    for group in data.get("duplicates", []):
        kind = "exact duplicate" if group["exact"] else "near duplicate"
        for p in group["paths"]:
            flags.setdefault(p, []).append(kind + (" (leakage)" if group.get("leakage") else ""))
    for item in data.get("outliers", []):
        flags.setdefault(item["path"], []).append("outlier")
    for k, group in enumerate(data.get("outlier_groups", [])):
        for p in group["paths"]:
            flags.setdefault(p, []).append(f"outlier group {k + 1}")
    return flags


def count_findings(data: dict[str, Any]) -> dict[str, int]:
    """The counts that audit, map and report print, from one audit.json."""
    return {
        "label_issues": len(data.get("label_issues", [])),
        "duplicate_groups": len(data.get("duplicates", [])),
        "exact_groups": sum(bool(g.get("exact")) for g in data.get("duplicates", [])),
        "leaking_groups": sum(bool(g.get("leakage")) for g in data.get("duplicates", [])),
        "outliers": len(data.get("outliers", [])),
        "outlier_groups": len(data.get("outlier_groups", [])),
        "flagged": len(flags_by_path(data)),
        "suspects": len(suspect_paths(data)),
    }
