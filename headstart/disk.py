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
        raise no_space(folder, need, what, kept)


def no_space(folder: str | os.PathLike, need: int, what: str, kept: str) -> DiskFullError:
    """The error for ``need`` bytes that are not free where ``folder`` is (nothing written yet)."""
    free = free_bytes(folder)
    have = f", {_mb(free)} are" if free is not None else ""
    return DiskFullError(
        f"No space left on device: {what} needs about {_mb(need + RESERVE_BYTES)} free in {folder}{have}. {kept}"
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


_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE
_fallocate = None


def reserve(fd: int, length: int) -> bool:
    """Allocate ``length`` bytes past the end of the file ``fd`` without changing its size (Linux
    ``fallocate(FALLOC_FL_KEEP_SIZE)``), so that writes there cannot fail for want of space.
    Returns False where the OS or the file system cannot (the caller checks `free_bytes` instead);
    raises ``OSError(ENOSPC)`` when the disk lacks the bytes."""
    global _fallocate
    if _fallocate is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            _fallocate = (fn, ctypes)
        except (OSError, AttributeError):
            _fallocate = False
    if not _fallocate or length <= 0:
        return False
    fn, ctypes = _fallocate
    if fn(fd, _KEEP_SIZE, os.fstat(fd).st_size, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSPC, errno.EDQUOT):
        raise OSError(err, os.strerror(err))
    return False  # EOPNOTSUPP, ENOSYS, EINVAL, ...: this file system cannot


def make_room(f, need: int, folder: str | os.PathLike, what: str, kept: str) -> None:
    """Make sure HDF5 can write ``need`` more bytes to the open h5py file ``f``: reserved past its end
    where the file system can (`reserve`), else checked free (`check_free`); a `DiskFullError`,
    nothing written yet, when they are not there."""
    try:
        if reserve(f.id.get_vfd_handle(), need + RESERVE_BYTES):
            return
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise no_space(folder, need, what, kept) from None
    check_free(folder, need, what, kept)


def release(path: str | os.PathLike) -> None:
    """Give back what `reserve` allocated past the end of a closed file (a truncate to its own size
    is a no-op on some file systems, hence the byte added and taken away)."""
    try:
        size = os.path.getsize(path)
        os.truncate(path, size + 1)
        os.truncate(path, size)
    except OSError:
        pass


def abandon_hdf5(f) -> None:
    """Close an h5py file whose write failed without letting HDF5 write anything more to it: its
    descriptor is pointed at /dev/null first, so the file on disk stays as the failure left it (its
    last commit readable; the next writer recovers it)."""
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except Exception:  # noqa: BLE001 - a closed or odd file: nothing more to protect
        pass
    try:
        f.close()
    except Exception:  # noqa: BLE001 - HDF5 complains about the failed flush; the file is safe
        pass
