"""Reading files that a user or a stranger named: regular files only, inside their root, each read capped.

A path in a cache, an audit.json or on the command line is data. ``x.jpg`` may be a named pipe
(opening it blocks forever), a link to ``/dev/zero`` (reading it never ends) or a link out of the
folder it is listed under. `open_regular` refuses anything but a regular file, checked before the
open and again on the open descriptor (no race with a swap in between); `read_regular` also
caps the bytes read; `inside` keeps a relative path within its root after links are resolved.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from headstart.errors import UnsafeFileError

MAX_PICTURE_BYTES = 256 << 20
"""No picture file is read past this (the largest pictures Pillow decodes are ~179 MP)."""

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary, if it is a regular file (links followed).

    Raises `UnsafeFileError` for a pipe, a device, a socket or a folder (never opened, or closed
    at once: a non-blocking open does not wait for a pipe's writer), and `OSError` as `open` does.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(f"{_kind(mode)}, not a regular file")
    fd = os.open(path, _FLAGS)
    try:
        mode = os.fstat(fd).st_mode  # what was opened, whatever the path names now
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(f"{_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int = MAX_PICTURE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (`UnsafeFileError` past that)."""
    with open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size > limit:
            raise UnsafeFileError(f"larger than {limit >> 20} MiB")
        data = fh.read(limit + 1)
    if len(data) > limit:  # grew while read
        raise UnsafeFileError(f"larger than {limit >> 20} MiB")
    return data


def inside(root: str | os.PathLike, rel: str) -> Path | None:
    """``root / rel`` if ``rel`` is a plain relative path that stays inside ``root`` once every
    link is resolved (no absolute path, no ``..``, no link out of the root); else None."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return None
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        return None
    try:
        base = Path(os.path.realpath(root))
        real = Path(os.path.realpath(Path(root) / pure))
    except (OSError, ValueError):
        return None
    return real if real != base and real.is_relative_to(base) else None
