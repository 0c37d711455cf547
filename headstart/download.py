"""Dataset download: fetch the Microsoft Dogs vs Cats zip and unpack its PetImages/ folder.

CLI usage::

    headstart download pets --out DEST [--url URL] [--archive ZIP]

Only the standard library is used (urllib, zipfile). The zip is streamed to
``DEST/.downloads/<name>.part``, resumed with an HTTP ``Range`` request when a ``.part`` is
already there, and renamed to ``DEST/.downloads/<name>`` once the bytes received match the
declared length. Only members under ``PetImages/`` are unpacked, into a temporary folder in
DEST that is then renamed to ``DEST/PetImages``: that folder is either complete or absent.
"""

from __future__ import annotations

import http.client
import logging
import os
import posixpath
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from headstart.errors import DownloadError

log = logging.getLogger(__name__)

PETS_URL = (
    "https://download.microsoft.com/download/3/e/1/3e1c3f21-ecdb-4869-8368-6deba77b919f/kagglecatsanddogs_5340.zip"
)
# Size of the archive at PETS_URL (786.7 MiB). Used only as the progress total when the
# server sends no length; completeness is checked against the server's Content-Length.
PETS_SIZE = 824_887_076

TOP = "PetImages"
CLASSES = ("Cat", "Dog")
CHUNK_SIZE = 1 << 20  # 1 MiB per read
DOWNLOADS = ".downloads"
BY_HAND = "Check the network, or download the zip by hand and pass --archive PATH."

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
        _check_zip(archive, remedy="Download it again, or pass another --archive PATH.")
    else:
        archive = _fetch(url, dest / DOWNLOADS, progress, timeout)
        try:
            _check_zip(archive, remedy="It was removed; run again to download it afresh.")
        except DownloadError:
            archive.unlink(missing_ok=True)
            raise

    _unpack(archive, dest)
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
        log.info("Using the archive already downloaded at %s", final)
        return final
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
    log.info("Downloaded %s to %s", url, final)
    return final


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


def _check_zip(archive: Path, remedy: str) -> None:
    """Open the central directory and look for PetImages/Cat/ and PetImages/Dog/ members."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(
            f"Expected the Dogs vs Cats zip at {archive}. Received: not a readable zip ({exc}). {remedy}"
        ) from exc
    missing = [c for c in CLASSES if not any(n.startswith(f"{TOP}/{c}/") for n in names)]
    if missing:
        wanted = ", ".join(f"{TOP}/{c}/" for c in missing)
        raise DownloadError(
            f"Expected {wanted} inside {archive}. Received: a zip of {len(names)} entries without them. {remedy}"
        )


def _member_parts(name: str) -> list[str] | None:
    """The path under PetImages/ as parts, or None when ``name`` is outside it.

    Raises DownloadError for absolute paths and ``..`` (zip-slip).
    """
    parts = name.replace("\\", "/").split("/")
    if parts[0] != TOP:
        return None
    rest = [p for p in parts[1:] if p not in ("", ".")]
    if ".." in rest or any(":" in p for p in rest):
        raise DownloadError(
            f"Expected archive members inside {TOP}/. Received: {name!r}, which points "
            "outside it. The archive is not the Dogs vs Cats zip; do not use it."
        )
    return rest


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack PetImages/ through a temporary folder, then rename it to ``dest/PetImages``."""
    target = dest / TOP
    for stale in dest.glob(f".{TOP}.tmp-*"):  # left by an unpack that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TOP}.tmp-", dir=dest))
    root = tmp.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rest = _member_parts(info.filename)
                if not rest:
                    continue
                path = tmp.joinpath(*rest)
                if not path.resolve().is_relative_to(root):
                    raise DownloadError(
                        f"Expected archive members inside {TOP}/. Received: "
                        f"{info.filename!r}. The archive is not the Dogs vs Cats zip."
                    )
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except DownloadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(
            f"Expected to unpack {TOP}/ from {archive} into {dest}. Received: {exc}. "
            "Check the free disk space, or download the zip again."
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
