"""Content hashes of a cache's pictures: the cache's own `sha256` column, or the files hashed now.

A schema-2 cache stores the SHA-256 of each picture file, computed while it was extracted. A
version-1 cache (or a row whose digest is unknown) has its file hashed here, from the cache's root
or another folder; a file that is missing, or whose cached path points outside the root, is skipped
and counted in a note. Paths are data: an absolute path, a ``..`` part, or anything but a regular
file (a FIFO would block, a device never ends) is not read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from headstart.errors import UnsafeFileError
from headstart.files import open_regular

READ_BYTES = 1 << 20


def safe_file(root: Path, rel: str) -> Path | None:
    """``root / rel`` if ``rel`` is a plain relative path to a regular file, else None."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if not rel or pure.is_absolute() or ".." in pure.parts or "\0" in rel:
        return None
    path = root / pure
    try:
        return path if stat.S_ISREG(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        return None


def file_sha256(path: Path) -> str | None:
    """Hex SHA-256 of a file's bytes, or None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open_regular(path) as fh:  # checked again on the descriptor: no pipe swapped in since
            while chunk := fh.read(READ_BYTES):
                h.update(chunk)
    except (OSError, UnsafeFileError):
        return None
    return h.hexdigest()


def content_hashes(
    paths: Sequence[str], stored: Sequence[str] | None, root: str | os.PathLike, workers: int = 4
) -> tuple[list[str | None], list[str]]:
    """One hex digest per path (None where unknown) and notes on what could not be hashed.

    ``stored``: the cache's `sha256` column (None for a version-1 cache); rows with "" there, and
    every row of a version-1 cache, are hashed from ``root / path``.
    """
    hashes: list[str | None] = [None] * len(paths)
    todo = []
    for i, _p in enumerate(paths):
        digest = stored[i] if stored is not None else ""
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            hashes[i] = digest
        else:
            todo.append(i)
    notes = []
    if not todo:
        return hashes, notes
    base = Path(root)
    files = [safe_file(base, paths[i]) for i in todo]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headstart-hash") as pool:
        digests = list(pool.map(lambda f: None if f is None else file_sha256(f), files))
    missing = 0
    for i, digest in zip(todo, digests):
        hashes[i] = digest
        missing += digest is None
    why = "a version-1 cache" if stored is None else "pictures without a stored digest"
    notes.append(f"hashed {len(todo) - missing:,} files under {base} ({why})")
    if missing:
        notes.append(
            f"{missing:,} pictures could not be hashed (missing under {base}, or not a regular file): "
            "exact duplicates among them are not found; pass --root where the pictures are now"
        )
    return hashes, notes
