"""Tests for headstart.download: a local HTTP server with Range support, no internet."""

from __future__ import annotations

import io
import re
import shutil
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from headstart import archive as archive_module
from headstart import download
from headstart.download import download_pets
from headstart.errors import DownloadError

NAME = "pets.zip"


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


PETS = {
    "PetImages/Cat/1.jpg": _jpeg((200, 100, 50)),
    "PetImages/Dog/1.jpg": _jpeg((50, 100, 200)),
    "PetImages/Dog/2.jpg": bytes(range(256)) * 16,  # a larger member, so several chunks
    "readme.txt": b"not part of the data set",
}


@pytest.fixture(scope="module")
def pets_zip() -> bytes:
    return _zip(PETS)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.data`` at ``/pets.zip``, with Range, truncation and stall modes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        data = srv.data
        if self.path != f"/{NAME}":
            self._reply(404, b"not found")
            return
        if srv.mode == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if srv.mode == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:10])
            self.wfile.flush()
            srv.release.wait(10)
            self.close_connection = True
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and srv.mode != "no-range":
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/zip")
        self.end_headers()
        self.wfile.write(body)

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve():
    """Start a loopback server for some bytes; return (url, server). All are shut down after."""
    servers = []

    def start(data: bytes, mode: str = "normal") -> tuple[str, ThreadingHTTPServer]:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.data, srv.mode, srv.ranges = data, mode, []
        srv.release = threading.Event()
        thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append(srv)
        host, port = srv.server_address[:2]
        return f"http://{host}:{port}/{NAME}", srv

    yield start
    for srv in servers:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def dead_url():
    """A loopback URL whose port is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/{NAME}"
    sock.close()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _no_temp(dest: Path) -> bool:
    return not list(dest.glob(".PetImages.tmp-*"))


def _assert_unpacked(dest: Path, got: Path) -> None:
    assert got == dest / "PetImages"
    assert _files(got) == {"Cat/1.jpg", "Dog/1.jpg", "Dog/2.jpg"}
    for name, data in PETS.items():
        if name.startswith("PetImages/"):
            assert (dest / name).read_bytes() == data
    assert not (dest / "readme.txt").exists()
    assert _no_temp(dest)


def test_download_unpacks_only_petimages(tmp_path, serve, pets_zip, monkeypatch):
    monkeypatch.setattr(download, "CHUNK_SIZE", 1024)
    url, srv = serve(pets_zip)
    calls = []
    got = download_pets(tmp_path, url=url, progress=lambda done, total: calls.append((done, total)))

    _assert_unpacked(tmp_path, got)
    assert (tmp_path / ".downloads" / NAME).read_bytes() == pets_zip
    assert not (tmp_path / ".downloads" / f"{NAME}.part").exists()
    assert srv.ranges == [None]
    dones = [done for done, _ in calls]
    assert len(calls) > 3
    assert dones == sorted(dones) and dones[-1] == len(pets_zip)
    assert {total for _, total in calls} == {len(pets_zip)}


def test_finished_archive_is_not_downloaded_again(tmp_path, serve, pets_zip, dead_url):
    url, _ = serve(pets_zip)
    got = download_pets(tmp_path, url=url)
    shutil.rmtree(got)
    # the archive is in .downloads, so an unreachable URL does not matter
    assert download_pets(tmp_path, url=dead_url) == got
    _assert_unpacked(tmp_path, got)


def test_resume_sends_range_and_appends(tmp_path, serve, pets_zip):
    url, srv = serve(pets_zip)
    half = len(pets_zip) // 2
    part = tmp_path / ".downloads" / f"{NAME}.part"
    part.parent.mkdir()
    part.write_bytes(pets_zip[:half])
    calls = []

    got = download_pets(tmp_path, url=url, progress=lambda d, t: calls.append((d, t)))

    assert srv.ranges == [f"bytes={half}-"]
    assert calls[0] == (half, len(pets_zip)) and calls[-1] == (len(pets_zip), len(pets_zip))
    assert (tmp_path / ".downloads" / NAME).read_bytes() == pets_zip
    _assert_unpacked(tmp_path, got)


def test_resume_refused_starts_over(tmp_path, serve, pets_zip):
    url, srv = serve(pets_zip, mode="no-range")
    part = tmp_path / ".downloads" / f"{NAME}.part"
    part.parent.mkdir()
    part.write_bytes(b"garbage from another file")

    got = download_pets(tmp_path, url=url)

    assert srv.ranges == ["bytes=25-"]
    assert (tmp_path / ".downloads" / NAME).read_bytes() == pets_zip
    _assert_unpacked(tmp_path, got)


def test_connection_closed_midway_keeps_part(tmp_path, serve, pets_zip):
    url, _ = serve(pets_zip, mode="truncate")
    with pytest.raises(DownloadError, match="Could not download .*run again to resume.*--archive"):
        download_pets(tmp_path, url=url)

    part = tmp_path / ".downloads" / f"{NAME}.part"
    assert part.read_bytes() == pets_zip[: len(pets_zip) // 2]
    assert not (tmp_path / ".downloads" / NAME).exists()
    assert not (tmp_path / "PetImages").exists()
    assert _no_temp(tmp_path)


def test_then_resume_after_truncation(tmp_path, serve, pets_zip):
    bad_url, _ = serve(pets_zip, mode="truncate")
    with pytest.raises(DownloadError):
        download_pets(tmp_path, url=bad_url)
    url, srv = serve(pets_zip)
    got = download_pets(tmp_path, url=url)
    assert srv.ranges == [f"bytes={len(pets_zip) // 2}-"]
    _assert_unpacked(tmp_path, got)


def test_stalled_server_times_out(tmp_path, serve, pets_zip):
    url, _ = serve(pets_zip, mode="stall")
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download_pets(tmp_path, url=url, timeout=0.5)
    assert time.monotonic() - start < 5
    assert (tmp_path / ".downloads" / f"{NAME}.part").read_bytes() == pets_zip[:10]
    assert not (tmp_path / "PetImages").exists()


def test_nothing_listening_fails_quickly(tmp_path, dead_url):
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"Could not download http://127\.0\.0\.1.*--archive"):
        download_pets(tmp_path, url=dead_url, timeout=5)
    assert time.monotonic() - start < 5
    assert not (tmp_path / "PetImages").exists()


def test_http_404(tmp_path, serve, pets_zip):
    url, _ = serve(pets_zip)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_pets(tmp_path, url=url.replace(NAME, "missing.zip"))
    assert not (tmp_path / "PetImages").exists()
    assert not (tmp_path / ".downloads" / "missing.zip").exists()


def test_zip_without_petimages_is_refused(tmp_path, serve):
    url, _ = serve(_zip({"Cats/1.jpg": b"x", "readme.txt": b"y"}))
    with pytest.raises(DownloadError, match=r"Expected PetImages/Cat/, PetImages/Dog/ inside"):
        download_pets(tmp_path, url=url)
    assert not (tmp_path / "PetImages").exists()
    assert _no_temp(tmp_path)
    # a useless download is removed, so the next run fetches it afresh
    assert not list((tmp_path / ".downloads").iterdir())


def test_not_a_zip_is_refused(tmp_path, serve):
    url, _ = serve(b"<html>Sign in to continue</html>")
    with pytest.raises(DownloadError, match="not a readable zip"):
        download_pets(tmp_path, url=url)
    assert not (tmp_path / "PetImages").exists()
    assert _no_temp(tmp_path)


@pytest.mark.parametrize("evil", ["PetImages/../../evil.txt", "PetImages/Cat/../../../evil.txt"])
def test_zip_slip_is_refused(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({**PETS, evil: b"owned"}))
    dest = tmp_path / "a" / "dest"

    with pytest.raises(DownloadError, match="outside"):
        download_pets(dest, archive=archive)

    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not (dest / "PetImages").exists()
    assert _no_temp(dest)
    assert archive.exists()  # a file the user gave is never deleted


def test_local_archive_needs_no_server(tmp_path, pets_zip, dead_url):
    archive = tmp_path / "by-hand.zip"
    archive.write_bytes(pets_zip)
    dest = tmp_path / "data"

    got = download_pets(dest, url=dead_url, archive=archive)

    _assert_unpacked(dest, got)
    assert archive.read_bytes() == pets_zip
    assert not (dest / ".downloads").exists()


def test_missing_local_archive(tmp_path):
    with pytest.raises(DownloadError, match="--archive"):
        download_pets(tmp_path / "data", archive=tmp_path / "nope.zip")


def test_existing_petimages_is_left_alone(tmp_path, dead_url, caplog):
    keep = tmp_path / "PetImages" / "Cat" / "mine.jpg"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"mine")

    with caplog.at_level("INFO", logger="headstart.download"):
        got = download_pets(tmp_path, url=dead_url)

    assert got == tmp_path / "PetImages"
    assert _files(got) == {"Cat/mine.jpg"}
    assert "already there" in caplog.text
    assert not (tmp_path / ".downloads").exists()


def test_empty_petimages_folder_is_filled(tmp_path, pets_zip):
    (tmp_path / "PetImages").mkdir()
    archive = tmp_path / "pets.zip"
    archive.write_bytes(pets_zip)
    _assert_unpacked(tmp_path, download_pets(tmp_path, archive=archive))


def test_part_already_complete_gets_416_and_starts_over(tmp_path, serve, pets_zip):
    url, srv = serve(pets_zip)
    part = tmp_path / ".downloads" / f"{NAME}.part"
    part.parent.mkdir()
    part.write_bytes(pets_zip)

    got = download_pets(tmp_path, url=url)

    assert srv.ranges == [f"bytes={len(pets_zip)}-", None]
    assert (tmp_path / ".downloads" / NAME).read_bytes() == pets_zip
    _assert_unpacked(tmp_path, got)


def _damage_member_data(archive: Path) -> None:
    """Flip a byte inside the first PetImages member's data: the zip still opens, its CRC fails."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("PetImages/Cat/1.jpg")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 20] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_a_damaged_archive_in_downloads_is_fetched_again(tmp_path, serve, pets_zip):
    url, srv = serve(pets_zip)
    got = download_pets(tmp_path, url=url)
    shutil.rmtree(got)
    _damage_member_data(tmp_path / ".downloads" / NAME)  # a bad disk, an interrupted copy

    got = download_pets(tmp_path, url=url)

    _assert_unpacked(tmp_path, got)
    assert srv.ranges == [None, None]  # fetched again, whole
    assert (tmp_path / ".downloads" / NAME).read_bytes() == pets_zip


def test_a_damaged_archive_without_a_checksum_is_tested_and_fetched_again(tmp_path, serve, pets_zip):
    url, srv = serve(pets_zip)
    old = tmp_path / ".downloads" / NAME  # as an earlier headstart left it: no recorded checksum
    old.parent.mkdir()
    old.write_bytes(pets_zip)
    _damage_member_data(old)

    got = download_pets(tmp_path, url=url)

    _assert_unpacked(tmp_path, got)
    assert srv.ranges == [None]


def test_a_download_damaged_on_the_server_is_removed_so_the_next_run_fetches_it(tmp_path, serve, pets_zip):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(pets_zip)
    _damage_member_data(bad)
    url, _ = serve(bad.read_bytes())
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="run again"):
        download_pets(dest, url=url)
    assert not (dest / "PetImages").exists() and _no_temp(dest)
    assert not list((dest / ".downloads").iterdir())
    url, _ = serve(pets_zip)
    _assert_unpacked(dest, download_pets(dest, url=url))


def _deflated(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_deflated({**PETS, "PetImages/Dog/bomb.jpg": bytes(64 << 20)}))
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="compress"):
        download_pets(dest, archive=archive)
    assert not (dest / "PetImages").exists() and _no_temp(dest)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) == 0


def test_a_bomb_of_many_small_members_is_refused(tmp_path):
    small = {f"PetImages/Cat/{i}.jpg": bytes(60 << 10) for i in range(200)}  # each under the per-member slack
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_deflated({**PETS, **small}))
    with pytest.raises(DownloadError, match="in all"):
        download_pets(tmp_path / "dest", archive=archive)
    assert not (tmp_path / "dest" / "PetImages").exists()


def test_member_size_total_size_and_member_count_are_capped(tmp_path, monkeypatch):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(_zip({**PETS, "PetImages/Dog/big.jpg": bytes(3 << 20)}))  # stored: ratio 1
    for name, value, needle in (
        ("MAX_MEMBER_BYTES", 2 << 20, "larger than"),
        ("MAX_TOTAL_BYTES", 2 << 20, "in all"),
        ("MAX_MEMBERS", 3, "members"),
    ):
        with monkeypatch.context() as m:
            m.setattr(archive_module, name, value)
            with pytest.raises(DownloadError, match=needle):
                download_pets(tmp_path / "dest", archive=archive)
        assert not (tmp_path / "dest" / "PetImages").exists()
    assert download_pets(tmp_path / "dest", archive=archive).is_dir()  # within the real limits


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_unpacked_folders_follow_the_umask(tmp_path, pets_zip, umask):
    import os
    import stat

    archive = tmp_path / "pets.zip"
    archive.write_bytes(pets_zip)
    old = os.umask(umask)
    try:
        got = download_pets(tmp_path / "dest", archive=archive)
    finally:
        os.umask(old)
    for folder in (got, got / "Cat", got / "Dog"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
    assert stat.S_IMODE((got / "Cat" / "1.jpg").stat().st_mode) == 0o666 & ~umask
