"""The writer lock of a cache: one writer per cache file, whatever the name it is reached by."""

from __future__ import annotations

import os
from pathlib import Path

from headstart.errors import CacheBusyError, CacheError
from headstart.locking import FileLock, lock_file_itself


class CacheLock:
    """One writer at a time per cache: an exclusive ``flock`` on a ``.lock`` file beside the file
    the path resolves to (a symbolic link and its target share one), and one on the cache file
    itself, which follows it through renames and other links.

    ``acquire`` fails at once with `CacheBusyError` when another process (or another open in
    this one) holds either. Checks that must see the cache as the writer will (its settings, its
    classes) are made after ``acquire``; see `headstart.extractor.runner.extract`. A writer that
    replaces the file (a new cache, a recovery, a prune) calls `pin` to lock the new one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.real = Path(os.path.realpath(self.path))
        self._busy = CacheBusyError(
            f"Another headstart process is writing {self.path}"
            + (f" (that is, {self.real})" if self.real != self.path.absolute() else "")
            + ". Wait for it to finish, or stop it and run the command again to resume."
        )
        self._lock = FileLock(self.real.with_name(self.real.name + ".lock"), self._busy)
        self._file = None  # the open cache file whose own flock we hold

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> CacheLock:
        try:
            self._lock.acquire()
        except OSError as err:
            raise CacheError(f"Cannot write next to {self.path}: {err.strerror or err}.") from None
        try:
            self.pin()
        except BaseException:
            self._lock.release()
            raise
        return self

    def pin(self) -> None:
        """Lock the file now at the path itself (again after it was replaced); `CacheBusyError` when
        another writer holds it under another name (a link, or a name it had before a rename)."""
        try:
            self._file = lock_file_itself(self.real, self._busy, self._file)
        except OSError as err:
            raise CacheError(f"Cannot open {self.path}: {err.strerror or err}.") from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lock.release()
