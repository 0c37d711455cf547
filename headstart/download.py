"""Dataset download: fetch the Microsoft Dogs vs Cats zip and unpack its PetImages/ folder.

CLI usage::

    headstart download pets --out DEST [--url URL] [--archive ZIP]

Only the standard library is used (urllib, zipfile). The zip is streamed to
``DEST/.downloads/<name>.part``, resumed with an HTTP ``Range`` request when a ``.part`` is
already there, and renamed to ``DEST/.downloads/<name>`` once the bytes received match the
declared length; its size and SHA-256 are recorded beside it (``<name>.sha256``) and checked
before it is used again, so a damaged archive is fetched again instead of failing the same way on
every run (one without a record, from an older headstart, has every member's CRC tested). Only
members under ``PetImages/`` are unpacked, into a temporary folder in DEST that is then renamed to
``DEST/PetImages`` by `headstart.archive` (which refuses zip bombs and zip slips). A downloaded archive
that turns out damaged is removed, so the next run fetches it again; a zip given with
``--archive`` is never removed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from headstart.archive import TOP, check_zip, unpack
from headstart.errors import ArchiveDamagedError, DownloadError

log = logging.getLogger(__name__)

PETS_URL = (
    "https://download.microsoft.com/download/3/e/1/3e1c3f21-ecdb-4869-8368-6deba77b919f/kagglecatsanddogs_5340.zip"
)
# Size of the archive at PETS_URL (786.7 MiB). Used only as the progress total when the
# server sends no length; completeness is checked against the server's Content-Length.
PETS_SIZE = 824_887_076

CHUNK_SIZE = 1 << 20  # 1 MiB per read
DOWNLOADS = ".downloads"
BY_HAND = "Check the network, or download the zip by hand and pass --archive PATH."

RECORD = ".sha256"  # beside a finished download: {"size": ..., "sha256": ...}

Progress = Callable[[int, int | None], None]

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def download_pets(
    dest: Path,
    url: str = PETS_URL,
    progress: Progress | None = None,
    timeout: float = 30,
    archive: Path | None = None,
) -> Path:
    """Download the Dogs vs Cats zip (or use ``archive``) and unpack ``dest/PetImages``.

    This is what ``headstart download pets --out DEST [--url URL] [--archive ZIP]`` runs.

    Args:
        dest: folder to unpack into; created if missing.
        url: where to fetch the zip from; ignored when ``archive`` is given.
        progress: called as ``progress(bytes_done, total_or_None)`` while downloading.
        timeout: seconds to wait on the connection before giving up.
        archive: a zip already on disk to unpack instead of downloading one.

    Returns:
        The path of ``dest/PetImages``, holding ``Cat/`` and ``Dog/``.

    Raises:
        DownloadError: the download failed or the zip is not the Dogs vs Cats archive.
            A partial download stays in ``dest/.downloads/*.part`` and the next call resumes it.
    """
    dest = Path(dest)
    if archive is None:
        _check_url(url)
    target = dest / TOP
    if target.is_dir() and any(target.iterdir()):
        log.info("%s is already there; leaving it as it is", target)
        return target
    if target.exists() and not target.is_dir():
        raise DownloadError(
            f"Expected {target} to be a folder or absent. Received: a file. Move it away and run again."
        )
    _make_dir(dest)

    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DownloadError(
                f"Expected the Dogs vs Cats zip at {archive}. Received: no such file. "
                "Check the path given to --archive."
            )
        check_zip(archive, remedy="Download it again, or pass another --archive PATH.")
        unpack(archive, dest, remedy="Download it again, or pass another --archive PATH.")
    else:
        archive = _fetch(url, dest / DOWNLOADS, progress, timeout)
        remedy = "It was removed; run again to download it afresh."
        try:
            check_zip(archive, remedy=remedy)
            unpack(archive, dest, remedy=remedy)
        except ArchiveDamagedError:
            _discard(archive)  # ours, and useless: the next run fetches it again
            raise
    log.info("Unpacked %s into %s", archive, target)
    return target


def _check_url(url: str) -> None:
    """A `DownloadError` unless ``url`` is an http(s) address with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise DownloadError(f"Expected --url to be an http:// or https:// address. Received: {url!r:.200}.")


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Expected a folder to write into at {path}. Received: {exc.strerror or exc}. Pass another DEST."
        ) from exc


def _archive_name(url: str) -> str:
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "pets.zip"


def _fetch(url: str, downloads: Path, progress: Progress | None, timeout: float) -> Path:
    """Stream ``url`` into ``downloads/<name>.part``, resuming it, and return the finished file."""
    _make_dir(downloads)
    final = downloads / _archive_name(url)
    if final.is_file():
        problem = _verify(final)
        if problem is None:
            log.info("Using the archive already downloaded at %s", final)
            return final
        log.warning("The archive at %s is damaged (%s); downloading it again", final, problem)
        _discard(final)
    part = final.with_name(final.name + ".part")

    try:
        if not _stream(url, part, progress, timeout, resume=True):
            log.info("Server refused to resume %s; starting over", part)
            _stream(url, part, progress, timeout, resume=False)
    except _NETWORK_ERRORS as exc:
        have = part.stat().st_size if part.exists() else 0
        kept = f" The {have} bytes received are kept in {part}; run again to resume."
        kept = kept if have else ""
        raise DownloadError(f"Could not download {url}: {_reason(exc)}.{kept} {BY_HAND}") from exc

    os.replace(part, final)
    _record(final)
    log.info("Downloaded %s to %s", url, final)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _record(archive: Path) -> None:
    """Write the size and SHA-256 of a finished download beside it (written beside, then renamed)."""
    record = archive.with_name(archive.name + RECORD)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"size": archive.stat().st_size, "sha256": _sha256(archive)}) + "\n")
    os.replace(tmp, record)


def _verify(archive: Path) -> str | None:
    """None if ``archive`` is as it was downloaded, else what is wrong with it.

    With its record: the same size and SHA-256. Without one (an older headstart): every member
    read and its CRC checked, and the record written if all are sound."""
    record = archive.with_name(archive.name + RECORD)
    try:
        if record.is_file():
            want = json.loads(record.read_text())
            if not isinstance(want, dict) or archive.stat().st_size != want.get("size"):
                return "its size differs from the download's"
            return None if _sha256(archive) == want.get("sha256") else "its SHA-256 differs from the download's"
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
        if bad is not None:
            return f"member {bad!r} fails its CRC"
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        return str(exc) or type(exc).__name__
    _record(archive)
    return None


def _discard(archive: Path) -> None:
    archive.unlink(missing_ok=True)
    archive.with_name(archive.name + RECORD).unlink(missing_ok=True)


def _stream(url: str, part: Path, progress: Progress | None, timeout: float, resume: bool) -> bool:
    """One GET into ``part``; False when the server would not resume and ``part`` was dropped."""
    offset = part.stat().st_size if resume and part.exists() else 0
    headers = {"User-Agent": "headstart", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        log.info("Resuming %s at byte %d", part, offset)
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            exc.close()
            part.unlink(missing_ok=True)
            return False
        raise

    with response:
        length = _int(response.headers.get("Content-Length"))
        start, total = _content_range(response.headers.get("Content-Range"))
        if response.status == 206:
            if not offset or start != offset:
                if not offset:
                    raise ConnectionError("server sent part of the file without being asked to")
                part.unlink(missing_ok=True)
                return False
            mode = "ab"
            if total is None and length is not None:
                total = offset + length
        else:
            if offset:
                log.info("Server sent the whole file instead of a range; starting over")
            offset, mode = 0, "wb"
            total = length
        if total is None and url == PETS_URL:
            total = PETS_SIZE

        done = offset
        received = 0
        if progress is not None:
            progress(done, total)
        with open(part, mode) as out:
            while True:
                chunk = response.read1(CHUNK_SIZE)  # what has arrived, at most 1 MiB
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)

    if length is not None and received != length:
        raise ConnectionError(f"connection closed after {received} of {length} bytes (expected Content-Length)")
    return True


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _content_range(text: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL); TOTAL may be ``*``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", text or "")
    if not match:
        return None, None
    return int(match[1]), _int(match[2])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
