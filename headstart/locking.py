"""One writer at a time: an exclusive advisory lock on a ``.lock`` file beside what is written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from headstart.errors import HeadstartError

try:  # POSIX advisory locks; Windows runs without the cross-process guard.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def lock_path_for(path: Path) -> Path:
    """``dir/.name.lock`` for ``dir/name``: hidden, beside the thing it guards."""
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, busy: HeadstartError) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) or raise ``busy`` at once.

    The holder unlinks the lock file when done, still holding the lock; a process that opened the
    old file checks, once it has the lock, that the file is still the one at the path, and
    otherwise takes the new one. So the lock file never outlives its holder.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise busy from None
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        fh.close()
