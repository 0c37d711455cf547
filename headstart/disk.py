"""A full disk: free space checked before writing, and one `DiskFullError` line when it fills anyway.

Every writer that can fill a disk (the cache writer, merge, the sweep journal) checks the free
space before each commit and turns an ``ENOSPC`` from the OS (or from HDF5, which reports it
inside its own error text) into `DiskFullError`, whose message starts with "No space left on
device" and says what was kept and how to resume.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from headstart.errors import DiskFullError

RESERVE_BYTES = 8 << 20
"""Kept free beyond what a commit needs: HDF5 metadata, the journal line, a close."""


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``folder`` (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def check_free(folder: str | os.PathLike, need: int, what: str, kept: str) -> None:
    """A `DiskFullError` unless ``need`` bytes (and `RESERVE_BYTES`) are free where ``folder`` is."""
    free = free_bytes(folder)
    if free is not None and free < need + RESERVE_BYTES:
        raise DiskFullError(
            f"No space left on device: {what} needs about {_mb(need + RESERVE_BYTES)} free in {folder}, "
            f"{_mb(free)} are. {kept}"
        )


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full (an OSError's errno, or HDF5's text of a failed write)."""
    if isinstance(err, DiskFullError):
        return True
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "errno = 28" in text or "No space left on device" in text or "Disk quota exceeded" in text


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_full(where: str | os.PathLike, what: str, kept: str) -> DiskFullError:
    """The error for a write that failed because the disk filled."""
    return DiskFullError(f"No space left on device while {what} ({Path(where)}). {kept}")
