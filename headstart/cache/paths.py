"""Relative picture paths, the key of every cache row: one spelling on every OS."""

from __future__ import annotations


def normalize_path(path: str) -> str:
    """The same relative path on every OS: forward slashes, no leading ``./``."""
    p = path.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p
