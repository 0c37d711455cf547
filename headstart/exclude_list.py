"""`--exclude-list FILE`: pictures to leave out (one path a line, as `headstart audit` writes suspects.txt).

The file is data: UTF-8 text, one picture path relative to the dataset root a line (as the cache
stores it); blank lines and lines starting with ``#`` are skipped; backslashes and a leading
``./`` are normalized as the split does. Anything else (binary, not UTF-8, a NUL, an absolute
path, a ``..`` part, a huge file) is one `ExcludeListError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from headstart.cache.paths import normalize_path
from headstart.errors import ExcludeListError

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
        if path.stat().st_size > MAX_BYTES:
            raise ExcludeListError(f"Expected an --exclude-list under {MAX_BYTES >> 20} MiB. Received: {path}.")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ExcludeListError(f"Expected --exclude-list as UTF-8 text. Received: {path} (not UTF-8).") from None
    except OSError as err:
        raise ExcludeListError(f"Cannot read --exclude-list {path}: {err.strerror or err}.") from None
    paths = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel = normalize_path(line)
        pure = PurePosixPath(rel)
        if "\0" in rel or pure.is_absolute() or ".." in pure.parts:
            raise ExcludeListError(
                f"Expected picture paths relative to the dataset root in --exclude-list. Received: {path} line "
                f"{number}: {line[:80]!r}."
            )
        paths.add(rel)
    return ExcludeList(str(path), frozenset(paths))
