"""extract --ray: the same rows as a local run, on a local Ray; a killed actor or driver loses nothing.

Ray starts once for the module (2 CPUs); the tests skip where Ray is not installed
(pip install -e '.[ray]' in the clone).
"""

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from headstart.cache import open_cache
from headstart.cli import app
from headstart.errors import RayError
from headstart.extractor.runner import extract

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
psutil = pytest.importorskip("psutil")

TINY = [
    "--backbone",
    "tiny",
    "--weights",
    "none",
    "--precision",
    "float32",
    "--batch-size",
    "4",
    "-q",
    "--commit-seconds",
    "0",
]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def local_ray():
    """One small Ray for the module: 2 CPUs, no dashboard, workers' logs kept out of the test output."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
    )
    yield ray
    ray.shutdown()


def rows_by_path(path):
    with open_cache(path) as c:
        feats = c.read()
        assert len(set(c.paths)) == len(c.paths), "a picture twice"
        return {p: (int(lab), feats[i]) for i, (p, lab) in enumerate(zip(c.paths, c.labels))}, sorted(c.failed)


def assert_same_rows(a_path, b_path):
    (a, fa), (b, fb) = rows_by_path(a_path), rows_by_path(b_path)
    assert a.keys() == b.keys() and fa == fb
    for p in a:
        assert a[p][0] == b[p][0]
        np.testing.assert_allclose(a[p][1], b[p][1], rtol=2e-3, atol=1e-3)  # float16 rounding


@pytest.mark.parametrize(
    "address, fragment",
    [
        ("127.0.0.1:1", "Expected a Ray cluster listening at 127.0.0.1:1"),
        ("ray://127.0.0.1:1", "Expected a Ray cluster listening at ray://127.0.0.1:1"),
        ("head-node", "Expected --ray auto, local, HOST:PORT or ray://HOST:PORT"),
    ],
)
def test_an_unreachable_cluster_is_one_line_in_seconds(monkeypatch, image_folder, tmp_path, address, fragment):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    result = CliRunner().invoke(
        app, ["extract", str(image_folder), "--out", str(tmp_path / "c.h5"), *TINY, "--ray", address]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert fragment in " ".join(result.output.split())
    assert not (tmp_path / "c.h5").exists()


def test_ray_gives_the_rows_of_a_local_run(local_ray, image_folder, tiny_config, tmp_path):
    (image_folder / "dog" / "empty.jpg").write_bytes(b"")
    extract(image_folder, tmp_path / "local.h5", tiny_config, batch_size=4)
    out = tmp_path / "ray.h5"
    calls = []
    res = extract(
        image_folder,
        out,
        tiny_config,
        batch_size=4,
        ray="local",
        workers=1,
        progress=lambda d, t, s: calls.append((d, t, s)),
    )
    assert (res.extracted, res.skipped, res.failed) == (12, 1, [("dog/empty.jpg", "empty file")])
    assert calls[0] == (0, 13, 0) and calls[-1] == (13, 13, 1)  # the progress bar's figures
    assert_same_rows(out, tmp_path / "local.h5")
    with open_cache(out) as c, open_cache(tmp_path / "local.h5") as local:
        assert c.complete and c.fingerprint == local.fingerprint and c.fingerprint_digest == local.fingerprint_digest
    # Nothing left to do: the CLI says so without starting any actor.
    again = CliRunner().invoke(app, ["extract", str(image_folder), "--out", str(out), *TINY, "--ray", "local"])
    assert again.exit_code == 0, again.output
    assert "Extracted 0, skipped 0, 13 already there" in " ".join(again.output.split())


def test_without_ray_installed_the_message_says_how_to_get_it(monkeypatch, image_folder, tiny_config, tmp_path):
    from headstart.extractor import distributed

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayError, match=r"pip install 'headstart\[ray\]'"):
        distributed.connect("local")


def _kill_one_actor() -> int:
    """SIGKILL the process of one model actor of the running extraction; its pid."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "MapWorker(MapBatches(EmbedActor))" in " ".join(proc.info["cmdline"] or []):
            proc.send_signal(signal.SIGKILL)
            return proc.info["pid"]
    return 0


@pytest.mark.slow
def test_a_killed_actor_is_replaced_and_its_batch_retried(local_ray, tiny_config, tmp_path):
    src = make_images(tmp_path / "images", per_class=150, size=(60, 80))
    killed = []

    def progress(done, total, skipped):
        if done and not killed:
            killed.append(_kill_one_actor())

    res = extract(src, tmp_path / "ray.h5", tiny_config, batch_size=4, ray="local", workers=2, progress=progress)
    assert killed and killed[0] and res.extracted == 300
    extract(src, tmp_path / "local.h5", tiny_config, batch_size=4)
    assert_same_rows(tmp_path / "ray.h5", tmp_path / "local.h5")


def _committed(path):
    try:
        with open_cache(path) as c:
            return len(c)
    except Exception:  # not created yet, or mid-creation
        return 0


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_has_every_row_once(tiny_config, tmp_path):
    src = make_images(tmp_path / "images", per_class=300, size=(120, 160))
    (src / "cat" / "zz-broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "headstart.cli",
        "extract",
        str(src),
        "--out",
        str(out),
        *TINY,
        "--ray",
        "local",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    try:
        deadline = time.monotonic() + 300
        while _committed(out) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < _committed(out) < 600, "the kill should land part-way"
        # Ray fate-shares its local cluster with the driver that started it: the raylet, the GCS and
        # the workers go with it. Its two per-node agents linger (Ray's behaviour, not ours).
        _, alive = psutil.wait_procs(children, timeout=60)
        core = [p.name() for p in alive if "Agent" not in p.name()]
        assert not core, f"Ray processes outlived their driver: {core}"
    finally:
        for p in children:
            if p.is_running():
                p.kill()  # only processes this test started (children of its driver)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    extract(src, tmp_path / "clean.h5", tiny_config, batch_size=4)
    assert_same_rows(out, tmp_path / "clean.h5")
    with open_cache(out) as c:
        assert c.complete and len(c) == 600 and [p for p, _ in c.failed] == ["cat/zz-broken.jpg"]


class _FakeRay:
    def __init__(self, resources):
        self._resources = resources

    def cluster_resources(self):
        return self._resources


@pytest.mark.parametrize(
    "resources, workers, expected",
    [
        ({"CPU": 2.0}, 1, {"num_cpus": 1.0}),
        ({"CPU": 2.0}, 2, {"num_cpus": 0.5}),  # a core is left for decoding: 2 actors never starve it
        ({"CPU": 16.0, "GPU": 4.0}, 4, {"num_gpus": 1, "num_cpus": 1.0}),
    ],
)
def test_actor_resources_leave_room_for_decoding(resources, workers, expected):
    from headstart.extractor.distributed import _actor_resources

    assert _actor_resources(_FakeRay(resources), workers) == expected


def test_more_actors_than_gpus_is_one_line():
    from headstart.extractor.distributed import _actor_resources

    with pytest.raises(RayError, match="at most the cluster's 2 GPUs"):
        _actor_resources(_FakeRay({"CPU": 8.0, "GPU": 2.0}), 3)


def test_an_error_raised_in_a_worker_comes_back_as_itself():
    from headstart.errors import BackboneError
    from headstart.extractor.distributed import _explain

    class Wrapped(Exception):  # how Ray wraps a worker's exception: the original in .cause
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError: long traceback\n...")
            self.cause = cause

    assert str(_explain(Wrapped(BackboneError("Expected the weights file.")))) == "Expected the weights file."
    other = _explain(Wrapped(ValueError("boom")))
    assert isinstance(other, RayError) and "run again to resume" in str(other)
