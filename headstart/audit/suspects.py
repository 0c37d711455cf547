"""suspects.txt, the list an audit writes for review: never written over a list a person edited.

The list is in the exclude-list format (`headstart.exclude_list.format_exclude_list`: every path
a cache can hold round-trips). audit.json records its SHA-256 (``files``); a suspects.txt whose
bytes differ (a reviewed list) refuses the next audit into that folder before any work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from headstart.audit.findings import suspect_paths
from headstart.errors import AuditError, UnsafeFileError
from headstart.files import read_regular

SUSPECTS_TXT = "suspects.txt"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_ours(out: Path, audit_json: str, limit: int) -> bool:
    """Whether ``out/suspects.txt`` is as headstart audit wrote it: its SHA-256 in ``out/audit_json``,
    or, for an audit.json without one, the plain list its findings give, as audits wrote it before."""
    path = out / SUSPECTS_TXT
    try:  # regular files only, capped: a pipe named audit.json must not hang the check
        data = json.loads(read_regular(out / audit_json, limit).decode("utf-8"))
        current = read_regular(path, limit) if not path.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, UnsafeFileError):
        return False
    if current is None or not isinstance(data, dict):
        return False
    files = data.get("files")
    if isinstance(files, dict):
        return files.get(SUSPECTS_TXT) == sha256(current)
    try:
        return current == "".join(p + "\n" for p in suspect_paths(data)).encode()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False


def check_out(out: Path, audit_json: str, limit: int) -> None:
    """``out`` must be a folder (or new), and any suspects.txt in it as headstart wrote it."""
    if out.exists() and not out.is_dir():
        raise AuditError(f"Expected --out to be a folder. Received: {out} (a file).")
    path = out / SUSPECTS_TXT
    if (path.exists() or path.is_symlink()) and not is_ours(out, audit_json, limit):
        raise AuditError(
            f"Expected {path} as headstart audit wrote it, to replace. Received: a file that changed since "
            "(a reviewed list?); it is kept and nothing was written. Use it (--exclude-list), move it away, "
            "or choose another --out."
        )
