"""Fingerprint of a cache: the canonical JSON of every setting that changes the numbers."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping


def canonical_json(settings: Mapping[str, Any]) -> str:
    """Serialize settings the same way on every machine: sorted keys, no spaces."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_digest(settings: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON, for file names and quick comparisons."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def diff_settings(expected: Mapping[str, Any], received: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ, as ``{name: (expected, received)}``; a missing key reads as None."""
    keys = sorted(set(expected) | set(received))
    return {k: (expected.get(k), received.get(k)) for k in keys if expected.get(k) != received.get(k)}


def describe_diff(diff: Mapping[str, tuple[Any, Any]], labels: tuple[str, str] = ("cache", "now")) -> str:
    """One line naming each differing setting: ``layer: 'fc2' (cache) vs 'fc1' (now)``."""
    first, second = labels
    return "; ".join(f"{k}: {a!r} ({first}) vs {b!r} ({second})" for k, (a, b) in diff.items())
