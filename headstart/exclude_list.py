"""`--exclude-list FILE`: pictures to leave out (one path a line, as `headstart audit` writes suspects.txt).

The file is data: UTF-8 text, one picture path relative to the dataset root a line (as the cache
stores it). Lines end at ``\n`` (a ``\r`` before it is dropped); blank lines and lines starting
with ``#`` are skipped; surrounding spaces are dropped; backslashes and a leading ``./`` are
normalized as the split does. A line starting with ``"`` is a JSON string, read exactly: that is
how `format_exclude_list` writes a path that a plain line would not give back (one starting with
``#``, ``"`` or a space, or holding a newline, a backslash or another control character), so
every path a cache can hold round-trips. (A line starting with ``"`` that is not a JSON string
is read as a plain line, as lists written before the quoting are.) Anything else (binary, not
UTF-8, a NUL, an absolute path, a ``..`` part, a huge file) is one `ExcludeListError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from headstart.cache.paths import normalize_path
from headstart.errors import ExcludeListError, UnsafeFileError
from headstart.files import read_regular

MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class ExcludeList:
    file: str
    paths: frozenset[str]

    def record(self, present: list[str]) -> dict:
        """What run.json keeps: the file, the listed paths found in the cache, how many were not."""
        return {
            "file": self.file,
            "paths": sorted(present),
            "listed": len(self.paths),
            "not_in_cache": len(self.paths) - len(present),
        }


def read_exclude_list(path: str | os.PathLike) -> ExcludeList:
    path = Path(path)
    try:
        if not path.is_file():
            raise ExcludeListError(f"Expected --exclude-list to be a text file. Received: {path} (no such file).")
        text = read_regular(path, MAX_BYTES).decode("utf-8")  # a pipe swapped in after the check is not waited on
    except UnsafeFileError:
        raise ExcludeListError(
            f"Expected an --exclude-list that is a regular file under {MAX_BYTES >> 20} MiB. Received: {path}."
        ) from None
    except UnicodeDecodeError:
        raise ExcludeListError(f"Expected --exclude-list as UTF-8 text. Received: {path} (not UTF-8).") from None
    except OSError as err:
        raise ExcludeListError(f"Cannot read --exclude-list {path}: {err.strerror or err}.") from None
    paths = set()
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        rel = _quoted(line)
        if rel is None:
            rel = normalize_path(line)
        pure = PurePosixPath(rel)
        if "\0" in rel or pure.is_absolute() or ".." in pure.parts:
            raise ExcludeListError(
                f"Expected picture paths relative to the dataset root in --exclude-list. Received: {path} line "
                f"{number}: {line[:80]!r}."
            )
        paths.add(rel)
    return ExcludeList(str(path), frozenset(paths))


def _quoted(line: str) -> str | None:
    """The path of a line written as a JSON string, or None for a plain line."""
    if not line.startswith('"'):
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def _plain(path: str) -> bool:
    """Whether ``path`` written as a plain line is read back as itself."""
    return (
        path[:1] not in ("#", '"', "")
        and path == path.strip()
        and normalize_path(path) == path
        and not any(ord(c) < 32 or ord(c) == 127 for c in path)
    )


def format_exclude_list(paths: Iterable[str], header: str = "") -> str:
    """The text of an exclude list of ``paths`` that `read_exclude_list` reads back exactly: a plain
    line where that round-trips, else a JSON string (ASCII). ``header``: comment lines to put first."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [p if _plain(p) else json.dumps(p) for p in paths]
    return "".join(line + "\n" for line in lines)
