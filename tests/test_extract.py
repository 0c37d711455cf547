"""The extraction runner: a clean run, resume after kill -9, updates, mismatches, pruning."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_images

from headstart.cache import open_cache
from headstart.errors import CacheMismatchError
from headstart.extractor import runner
from headstart.extractor.embed import auto_batch_size, embed_files
from headstart.extractor.options import make_config
from headstart.extractor.runner import extract


def rows_by_path(cache_path):
    with open_cache(cache_path) as c:
        feats = c.read(dtype=np.float16)
        return {p: (int(lab), feats[i]) for i, (p, lab) in enumerate(zip(c.paths, c.labels))}


def test_clean_run_fills_the_cache(image_folder, tiny_config, tmp_path):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"")
    calls = []
    res = extract(
        image_folder, tmp_path / "c.h5", tiny_config, batch_size=4, progress=lambda d, t, s: calls.append((d, t, s))
    )
    assert (res.extracted, res.skipped, res.total_rows, res.complete) == (12, 1, 12, True)
    assert res.failed == [("cat/broken.jpg", "empty file")]
    assert calls[0] == (0, 13, 0) and calls[-1] == (13, 13, 1)
    with open_cache(tmp_path / "c.h5") as c:
        assert c.class_names == ["cat", "dog"] and c.counts() == {"cat": 6, "dog": 6}
        assert c.dim == 32 and c.dtype == np.float16
        assert c.fingerprint == tiny_config.fingerprint()
        assert c.failed == [("cat/broken.jpg", "empty file")]
        assert np.isfinite(c.read()).all() and c.read().std() > 0


def test_rerun_extracts_nothing_and_update_adds_only_new_pictures(image_folder, tiny_config, tmp_path):
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4)
    before = rows_by_path(out)
    again = extract(image_folder, out, tiny_config, batch_size=4)
    assert (again.extracted, again.already) == (0, 12)
    make_images(tmp_path / "more", per_class=3, seed=1)
    for c in ("cat", "dog"):
        for f in (tmp_path / "more" / c).iterdir():
            shutil.copy(f, image_folder / c / f"new-{f.name}")
    upd = extract(image_folder, out, tiny_config, batch_size=4)
    assert (upd.extracted, upd.already, upd.total_rows) == (6, 12, 18)
    after = rows_by_path(out)
    for p, (label, feat) in before.items():
        assert after[p][0] == label and np.array_equal(after[p][1], feat)


def test_resumed_rows_equal_a_clean_run(image_folder, tiny_config, tmp_path):
    """Batches are formed differently on resume; every row must still be the same."""
    extract(image_folder, tmp_path / "clean.h5", tiny_config, batch_size=5)
    extract(image_folder, tmp_path / "part.h5", tiny_config, batch_size=5, limit_per_class=2)
    extract(image_folder, tmp_path / "part.h5", tiny_config, batch_size=5)
    clean, resumed = rows_by_path(tmp_path / "clean.h5"), rows_by_path(tmp_path / "part.h5")
    assert clean.keys() == resumed.keys()
    for p in clean:
        assert clean[p][0] == resumed[p][0]
        np.testing.assert_array_equal(clean[p][1], resumed[p][1])


def test_other_settings_are_refused_unless_overwrite(image_folder, tiny_config, tmp_path):
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4)
    other = make_config("tiny", weights="none", precision="float32", dtype="float32", resize="crop")
    with pytest.raises(CacheMismatchError) as err:
        extract(image_folder, out, other, batch_size=4)
    assert "dtype: 'float16' (cache) vs 'float32' (now)" in str(err.value)
    assert "resize: 'squash' (cache) vs 'crop' (now)" in str(err.value)
    assert "--overwrite" in str(err.value)
    res = extract(image_folder, out, other, batch_size=4, overwrite=True)
    assert res.extracted == 12
    with open_cache(out) as c:
        assert c.fingerprint["dtype"] == "float32" and c.dtype == np.float32


def test_new_class_is_refused(image_folder, tiny_config, tmp_path):
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4)
    make_images(image_folder, per_class=1, classes=("cat", "dog", "emu"))
    with pytest.raises(CacheMismatchError, match="new classes: emu"):
        extract(image_folder, out, tiny_config, batch_size=4)
    assert extract(image_folder, out, tiny_config, batch_size=4, exclude=["emu"]).extracted == 0


def test_vanished_pictures_are_reported_and_pruned(image_folder, tiny_config, tmp_path):
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4)
    (image_folder / "dog" / "dog.0.jpg").unlink()
    with open_cache(out) as c:
        assert c.missing_files() == ["dog/dog.0.jpg"]
    res = extract(image_folder, out, tiny_config, batch_size=4, prune=True)
    assert (res.pruned, res.total_rows) == (1, 11)
    with open_cache(out) as c:
        assert "dog/dog.0.jpg" not in c.paths and c.missing_files() == [] and c.complete


def test_embed_files_lists_unreadable_files(image_folder, tiny_config, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    files = [image_folder / "cat" / "cat.0.jpg", bad, image_folder / "dog" / "dog.1.jpg"]
    res = embed_files(files, tiny_config, batch_size=2)
    assert res.features.shape == (2, 32) and res.ok == [files[0], files[2]]
    assert res.failed == [(bad, "not an image (format not recognised)")]


KILLER_ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def _extract_cmd(src, out):
    return [
        sys.executable,
        "-m",
        "headstart.cli",
        "extract",
        str(src),
        "--out",
        str(out),
        "--backbone",
        "tiny",
        "--weights",
        "none",
        "--precision",
        "float32",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "-q",
        "--commit-seconds",
        "0",
    ]


def _committed(path):
    try:
        with open_cache(path) as c:
            return len(c)
    except Exception:  # not created yet, or mid-creation
        return 0


def test_kill_9_at_several_points_then_resume_equals_a_clean_run(tmp_path):
    # 600 pictures take the tiny model a few seconds: long enough to kill it part-way each time.
    src = make_images(tmp_path / "images", per_class=300, size=(120, 160))
    (src / "cat" / "zz-broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "killed.h5"
    for kill_at in (8, 200, 400):
        proc = subprocess.Popen(
            _extract_cmd(src, out), env=KILLER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while _committed(out) < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < _committed(out) < 600, "the kill should land part-way"
    done = subprocess.run(_extract_cmd(src, out), env=KILLER_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean = tmp_path / "clean.h5"
    assert subprocess.run(_extract_cmd(src, clean), env=KILLER_ENV, capture_output=True).returncode == 0
    a, b = rows_by_path(out), rows_by_path(clean)
    assert len(a) == 600 and a.keys() == b.keys()
    for p in a:
        assert a[p][0] == b[p][0]
        np.testing.assert_array_equal(a[p][1], b[p][1])
    with open_cache(out) as c:
        assert c.complete and [p for p, _ in c.failed] == ["cat/zz-broken.jpg"]


def test_batch_size_auto_is_32_on_cpu(image_folder, tiny_config, tmp_path):
    assert extract(image_folder, tmp_path / "c.h5", tiny_config, batch_size="auto").batch_size == 32


def test_batch_size_auto_steps_down_from_out_of_memory(tiny_config, monkeypatch):
    class FakeModel:
        def predict_on_batch(self, x):
            if len(x) > 64:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x

    from headstart.extractor import embed

    monkeypatch.setattr(embed, "_on_accelerator", lambda: True)
    assert auto_batch_size(FakeModel(), tiny_config) == 32
    monkeypatch.setattr(FakeModel, "predict_on_batch", lambda self, x: x)
    assert auto_batch_size(FakeModel(), tiny_config) == 256


def test_a_file_name_that_is_not_utf8_is_recorded_not_fatal(image_folder, tiny_config, tmp_path):
    name = os.fsdecode(b"bad-\xff-name.jpg")
    shutil.copy(image_folder / "cat" / "cat.0.jpg", image_folder / "cat" / name)
    out = tmp_path / "c.h5"
    res = extract(image_folder, out, tiny_config, batch_size=4)
    assert res.extracted == 12 and res.skipped == 1
    assert res.failed[0][0] == "cat/bad-\ufffd-name.jpg" and "not valid UTF-8" in res.failed[0][1]
    again = extract(image_folder, out, tiny_config, batch_size=4)
    assert (again.extracted, again.skipped, again.already) == (0, 0, 13)


def test_one_model_for_several_folders(tmp_path, tiny_config, monkeypatch):
    from headstart.errors import HeadstartError
    from headstart.extractor import model
    from headstart.extractor.embed import Embedder

    embedder = Embedder(tiny_config, 4)
    monkeypatch.setattr(model, "build_model", lambda config: pytest.fail("built a second model"))
    a = make_images(tmp_path / "a", per_class=2)
    b = make_images(tmp_path / "b", per_class=3, seed=1)
    assert extract(a, tmp_path / "a.h5", embedder=embedder).extracted == 4
    assert extract(b, tmp_path / "b.h5", tiny_config, embedder=embedder).extracted == 6
    other = make_config("tiny", weights="none", precision="float32", resize="crop")
    with pytest.raises(HeadstartError, match="same extraction config"):
        extract(b, tmp_path / "c.h5", other, embedder=embedder)


@pytest.mark.slow
def test_kill_9_at_random_moments_never_damages_the_cache(tmp_path):
    """Ten kills at random moments of the extraction loop (not at chosen row counts): every time
    the cache opens with one path per row, and the final rows equal a clean run's."""
    import random

    rng = random.Random(0)
    src = make_images(tmp_path / "images", per_class=400, size=(240, 320))
    out = tmp_path / "killed.h5"
    for _ in range(10):
        before = _committed(out)
        if before == 800:
            break
        proc = subprocess.Popen(
            _extract_cmd(src, out), env=KILLER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while _committed(out) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # wait until this run is extracting ...
        time.sleep(rng.uniform(0.0, 0.3))  # ... then kill it at a random moment
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open_cache(out) as c:  # never unreadable, never a row without its path
            assert len(c) == len(c.paths) <= 800 and len(c.labels) == len(c)
    assert subprocess.run(_extract_cmd(src, out), env=KILLER_ENV, capture_output=True).returncode == 0
    clean = tmp_path / "clean.h5"
    assert subprocess.run(_extract_cmd(src, clean), env=KILLER_ENV, capture_output=True).returncode == 0
    a, b = rows_by_path(out), rows_by_path(clean)
    assert len(a) == 800 and a.keys() == b.keys()
    for p in a:
        np.testing.assert_array_equal(a[p][1], b[p][1])


def test_a_reader_in_another_process_does_not_block_the_writer(image_folder, tiny_config, tmp_path):
    """`headstart info` or a training run may have the cache open while an update starts."""
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4, limit_per_class=2)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from headstart import open_cache\n"
            "with open_cache(sys.argv[1]) as c:\n    print(len(c), flush=True); time.sleep(30)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "4"  # the reader has the file open now
        assert extract(image_folder, out, tiny_config, batch_size=4).extracted == 8
    finally:
        reader.kill()
        reader.wait()
    with open_cache(out) as c:
        assert len(c) == 12 and c.complete


def test_the_settings_are_checked_under_the_writer_lock(image_folder, tiny_config, tmp_path, monkeypatch):
    """Issue 7, part 6: another writer slipping in between the settings check and the first row
    (here while the model is built) mixed two settings in one cache."""
    from headstart.cache import CacheHeader, CacheWriter
    from headstart.errors import CacheBusyError

    out = tmp_path / "c.h5"
    other = {**tiny_config.fingerprint(), "resize": "crop"}
    intruder = []
    real = runner.Embedder

    def build_while_another_writer_tries(config, batch_size):
        header = CacheHeader(dim=32, dtype="float16", fingerprint=other, class_names=("cat", "dog"), root="/x")
        try:
            with CacheWriter(out, header) as w:
                w.append(np.zeros((1, 32), np.float32), [0], ["cat/other.jpg"])
                w.close(complete=True)
            intruder.append("wrote")
        except CacheBusyError:
            intruder.append("busy")
        return real(config, batch_size)

    monkeypatch.setattr(runner, "Embedder", build_while_another_writer_tries)
    extract(image_folder, out, tiny_config, batch_size=4)
    assert intruder == ["busy"]
    with open_cache(out) as c:
        assert c.fingerprint == tiny_config.fingerprint() and len(c) == 12 and "cat/other.jpg" not in c.paths


def test_overwrite_replaces_only_a_cache(image_folder, tiny_config, tmp_path):
    from headstart.errors import DatasetError

    notes = tmp_path / "notes.h5"
    notes.write_text("my notes, not a cache")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        extract(image_folder, notes, tiny_config, batch_size=4, overwrite=True)
    assert notes.read_text() == "my notes, not a cache"
    assert not (tmp_path / "notes.h5.lock").exists()


def test_a_cache_whose_progress_passes_its_rows_is_refused_not_grown(image_folder, tiny_config, tmp_path):
    """Issue 7: extract grew such a cache with empty rows."""
    import h5py

    from headstart.errors import CacheError

    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4, limit_per_class=2)
    with h5py.File(out, "r+", locking=False) as f:
        f["progress"][0] = 40
    before = out.read_bytes()
    with pytest.raises(CacheError, match="/progress counts 40 rows but /features holds 4"):
        extract(image_folder, out, tiny_config, batch_size=4)
    assert out.read_bytes() == before


def test_a_cache_from_another_folder_is_refused_unless_the_pictures_moved(image_folder, tiny_config, tmp_path):
    """Issue 7: extract OTHER_FOLDER --out existing.h5 mixed two folders in one cache."""
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4)
    other = make_images(tmp_path / "other", per_class=2, seed=3)
    before = out.read_bytes()
    with pytest.raises(CacheMismatchError) as err:
        extract(other, out, tiny_config, batch_size=4)
    assert str(image_folder.resolve()) in str(err.value) and str(other.resolve()) in str(err.value)
    assert "--root-moved" in str(err.value) and out.read_bytes() == before
    moved = tmp_path / "moved"
    image_folder.rename(moved)
    res = extract(moved, out, tiny_config, batch_size=4, root_moved=True)
    assert (res.extracted, res.already, res.moved_from) == (0, 12, str(image_folder.resolve()))
    with open_cache(out) as c:
        assert c.root == str(moved.resolve()) and len(c) == 12 and c.missing_files() == []
    again = extract(moved, out, tiny_config, batch_size=4)  # now the recorded folder
    assert again.already == 12 and again.moved_from is None


def test_extract_reports_the_links_it_did_not_follow(image_folder, tiny_config, tmp_path):
    (image_folder / "cat" / "loop").symlink_to(".")
    res = extract(image_folder, tmp_path / "c.h5", tiny_config, batch_size=4)
    assert res.total_rows == 12
    assert [p for p, _ in res.skipped_links] == ["cat/loop"]


def test_cache_holds_the_sha256_of_each_picture_file(image_folder, tiny_config, tmp_path):
    import hashlib

    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config)
    with open_cache(out) as c:
        assert c.sha256 == [hashlib.sha256((image_folder / p).read_bytes()).hexdigest() for p in c.paths]


@pytest.fixture
def alarm():
    """Turn a hang into a failure: a blocked open() is interrupted and raises after ``seconds``."""

    def on_alarm(signum, frame):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, on_alarm)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_pipe_or_a_device_named_like_a_picture_is_recorded_not_read(image_folder, tiny_config, tmp_path, alarm):
    os.mkfifo(image_folder / "cat" / "x.jpg")  # opening it for reading waits for a writer forever
    (image_folder / "dog" / "zero.jpg").symlink_to("/dev/zero")  # reading it never ends
    alarm(60)
    res = extract(image_folder, tmp_path / "c.h5", tiny_config, batch_size=4)
    alarm(0)
    assert (res.extracted, res.skipped) == (12, 2)
    reasons = dict(res.failed)
    assert "named pipe" in reasons["cat/x.jpg"] and "device" in reasons["dog/zero.jpg"]


def test_each_picture_read_is_capped(image_folder, tiny_config, tmp_path, monkeypatch):
    from headstart import files

    monkeypatch.setattr(files, "MAX_PICTURE_BYTES", 1 << 20)
    with open(image_folder / "cat" / "huge.jpg", "wb") as fh:  # sparse: no disk used
        fh.truncate(3 << 20)
    res = extract(image_folder, tmp_path / "c.h5", tiny_config, batch_size=4)
    assert dict(res.failed)["cat/huge.jpg"] == "cannot read: larger than 1 MiB"
