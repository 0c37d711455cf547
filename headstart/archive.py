"""The Dogs vs Cats zip: its members checked (layout, zip slip, zip bomb) and PetImages/ unpacked.

`unpack` writes into a temporary folder beside the target and renames it into place, so
``DEST/PetImages`` is either complete or absent, with the permissions the umask gives (not the
0700 of a temporary folder). A zip bomb is refused from the zip's directory before anything is
written: member count, member size, total size and compression ratio are capped (Dogs vs Cats
JPEGs compress about 1:1), and no member is written past the size it declares. A damaged or
unsafe zip raises `ArchiveDamagedError`; a full disk or a permission problem `DownloadError`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from headstart.errors import ArchiveDamagedError, DownloadError

TOP = "PetImages"
CLASSES = ("Cat", "Dog")
CHUNK_SIZE = 1 << 20
MAX_MEMBERS = 100_000  # the Dogs vs Cats zip has ~25,000
MAX_MEMBER_BYTES = 64 << 20  # its largest picture is well under 1 MiB
MAX_TOTAL_BYTES = 4 << 30  # it unpacks to ~0.8 GiB
MAX_RATIO = 10  # JPEGs compress about 1:1; a zip bomb's zeros 1000:1
RATIO_SLACK = 64 << 10  # a small member (a text file) may compress better than MAX_RATIO


def check_zip(archive: Path, remedy: str) -> None:
    """Open the central directory and look for PetImages/Cat/ and PetImages/Dog/ members."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveDamagedError(
            f"Expected the Dogs vs Cats zip at {archive}. Received: not a readable zip ({exc}). {remedy}"
        ) from exc
    missing = [c for c in CLASSES if not any(n.startswith(f"{TOP}/{c}/") for n in names)]
    if missing:
        wanted = ", ".join(f"{TOP}/{c}/" for c in missing)
        raise ArchiveDamagedError(
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
        raise ArchiveDamagedError(
            f"Expected archive members inside {TOP}/. Received: {name!r}, which points "
            "outside it. The archive is not the Dogs vs Cats zip; do not use it."
        )
    return rest


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_sizes(zf: zipfile.ZipFile, archive: Path) -> None:
    """Refuse a zip bomb from its directory, before anything is written: too many members, a member
    too large or compressed far more than pictures are, or too much in all."""
    members = [i for i in zf.infolist() if _member_parts(i.filename)]
    what = "The archive is not the Dogs vs Cats zip (a zip bomb?); do not use it."
    if len(members) > MAX_MEMBERS:
        raise ArchiveDamagedError(
            f"Expected at most {MAX_MEMBERS:,} members under {TOP}/ in {archive}. Received: {len(members):,}. {what}"
        )
    total = packed = 0
    for info in members:
        if info.file_size > MAX_MEMBER_BYTES:
            raise ArchiveDamagedError(
                f"Expected pictures of at most {MAX_MEMBER_BYTES >> 20} MiB in {archive}. Received: "
                f"{info.filename!r}, larger than that ({info.file_size:,} bytes). {what}"
            )
        if info.file_size > MAX_RATIO * info.compress_size + RATIO_SLACK:
            raise ArchiveDamagedError(
                f"Expected pictures that compress at most {MAX_RATIO}:1 in {archive}. Received: {info.filename!r}, "
                f"{info.file_size:,} bytes compressed to {info.compress_size:,}. {what}"
            )
        total += info.file_size
        packed += info.compress_size
    if total > MAX_RATIO * packed + (1 << 20):  # many small members, each within RATIO_SLACK
        raise ArchiveDamagedError(
            f"Expected pictures that compress at most {MAX_RATIO}:1 in {archive}. Received: {len(members):,} "
            f"members, {total:,} bytes compressed to {packed:,} in all. {what}"
        )
    if total > MAX_TOTAL_BYTES:
        raise ArchiveDamagedError(
            f"Expected at most {MAX_TOTAL_BYTES >> 30} GiB under {TOP}/ in {archive}. Received: {total:,} bytes "
            f"in all. {what}"
        )


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """One member into ``path``, never more bytes than its directory entry declared."""
    written = 0
    with zf.open(info) as src, open(path, "wb") as out:
        while chunk := src.read(CHUNK_SIZE):
            written += len(chunk)
            if written > info.file_size:
                raise zipfile.BadZipFile(f"{info.filename!r} holds more than the {info.file_size:,} bytes declared")
            out.write(chunk)


def unpack(archive: Path, dest: Path, remedy: str) -> None:
    """Unpack PetImages/ through a temporary folder, then rename it to ``dest/PetImages``."""
    target = dest / TOP
    for stale in dest.glob(f".{TOP}.tmp-*"):  # left by an unpack that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TOP}.tmp-", dir=dest))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; PetImages is a plain folder of the user's
    root = tmp.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_sizes(zf, archive)
            for info in zf.infolist():
                rest = _member_parts(info.filename)
                if not rest:
                    continue
                path = tmp.joinpath(*rest)
                if not path.resolve().is_relative_to(root):
                    raise ArchiveDamagedError(
                        f"Expected archive members inside {TOP}/. Received: "
                        f"{info.filename!r}. The archive is not the Dogs vs Cats zip."
                    )
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(zf, info, path)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except DownloadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # the archive's bytes are damaged
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArchiveDamagedError(
            f"Expected a sound zip at {archive}. Received: {exc} (the archive is damaged). {remedy}"
        ) from exc
    except (OSError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(
            f"Expected to unpack {TOP}/ from {archive} into {dest}. Received: {exc}. "
            "Check the free disk space and the folder's permissions, then run again."
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
