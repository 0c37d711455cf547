"""One writer at a time: an exclusive advisory lock on a ``.lock`` file beside what is written."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX advisory locks; Windows runs without the cross-process guard.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def lock_path_for(path: Path) -> Path:
    """``dir/.name.lock`` for ``dir/name``: hidden, beside the thing it guards."""
    return path.with_name(f".{path.name}.lock")


class FileLock:
    """An exclusive ``flock`` on ``lock_path`` (created if needed); ``acquire`` raises ``busy`` at once
    when another process (or another open in this one) holds it.

    The holder unlinks the lock file when done, still holding the lock; a process that opened the
    old file checks, once it has the lock, that the file is still the one at the path, and
    otherwise takes the new one. So the lock file never outlives its holder. OS errors (a folder
    that cannot be written) propagate as `OSError`.
    """

    def __init__(self, lock_path: Path, busy: Exception):
        self.lock_path = Path(lock_path)
        self.busy = busy
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> FileLock:
        if fcntl is None or self._fh is not None:
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.lock_path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise self.busy from None
            try:
                if os.fstat(fh.fileno()).st_ino == os.stat(self.lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            fh.close()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            self._fh.close()
            self._fh = None


def lock_file_itself(path: Path, busy: Exception, held=None):
    """An exclusive ``flock`` on the file at ``path`` itself (not on a lock file beside it): it follows
    the file through renames and links, where a lock file named after the path cannot. Returns the
    open handle that holds it (close it to release), or None when there is no file (or no flock).
    ``held``: a handle this process already locks; kept when it is still the file at ``path`` (a
    second lock of the same file from this process would refuse itself)."""
    if fcntl is None:
        return held
    try:
        fh = open(path, "r+b")  # for writing: NFS emulates flock with locks that need it
    except PermissionError:
        fh = open(path, "rb")
    except FileNotFoundError:
        return held
    if held is not None and os.fstat(held.fileno()).st_ino == os.fstat(fh.fileno()).st_ino:
        fh.close()
        return held
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise busy from None
    except OSError:  # a file system without locks (ENOLCK): the lock file beside it still guards
        fh.close()
        return held
    if held is not None:
        held.close()
    return fh


def file_locked(path: Path) -> bool:
    """Whether a process holds `lock_file_itself` on the file at ``path`` right now."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fh = open(path, "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, busy: Exception) -> Iterator[None]:
    """Hold a `FileLock` on ``lock_path`` for the block, or raise ``busy`` at once."""
    lock = FileLock(lock_path, busy).acquire()
    try:
        yield
    finally:
        lock.release()
