"""A normal run is quiet: no TensorFlow/absl C++ lines and no library warnings on stderr; -v brings them back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_images

from headstart import tf_quiet

ROOT = Path(__file__).resolve().parents[1]
CPP_LINE = re.compile(r"^[IWE]\d{4} ", re.M)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _headstart(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "headstart.cli", *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    make_images(root / "pictures", per_class=3)
    from PIL import Image

    # Over Image.MAX_IMAGE_PIXELS (89 MP): Pillow warns of a decompression bomb, and headstart reads it fine.
    Image.new("RGB", (9500, 9500), (200, 60, 60)).save(root / "pictures" / "cat" / "big.jpg", quality=50)
    return root


def _tensorflow_is_noisy() -> bool:
    """Whether TensorFlow prints C++ lines when it loads on this machine (it does on x86 CPUs)."""
    env = _env()
    env.pop("PYTHONPATH")
    res = subprocess.run(
        [sys.executable, "-c", "import keras, tensorflow as tf; tf.config.list_physical_devices('GPU')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return bool(CPP_LINE.search(res.stderr))


def test_extract_with_the_bundled_mobilenet_prints_no_cpp_lines(pictures):
    res = _headstart(
        "extract", "pictures", "--out", "bundled.h5", "--backbone", "mobilenet", "--alpha", "0.25",
        "--weights", "bundled", "-q", cwd=pictures,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Extracted 7" in res.stdout
    assert not CPP_LINE.search(res.stderr), res.stderr
    assert "cuInit" not in res.stderr and "absl::InitializeLog" not in res.stderr, res.stderr
    assert "Warning" not in res.stderr, res.stderr  # DecompressionBombWarning for big.jpg
    assert res.stderr.strip() == "", res.stderr


def test_verbose_brings_the_tensorflow_lines_back(pictures):
    res = _headstart(
        "-v", "extract", "pictures", "--out", "verbose.h5", "--backbone", "tiny", "--weights", "none",
        "--input-size", "32", "-q", cwd=pictures,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    if not CPP_LINE.search(res.stderr) and not _tensorflow_is_noisy():
        pytest.skip("TensorFlow prints nothing when it loads on this machine")
    assert CPP_LINE.search(res.stderr), res.stderr
    assert "DecompressionBombWarning" in res.stderr, res.stderr  # -v shows library warnings too


def test_noise_patterns_keep_real_errors():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796456448.368727    7268 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796456448.369059    7268 cudart_stub.cc:31] Could not find cuda drivers on your machine",
        "W0000 00:00:1796456448.369059    7268 something.cc:1] a warning",
        "E0000 00:00:1796456452.095248    7268 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.",
    ]
    real = [
        "E0000 00:00:1796456452.095248    7268 some_op.cc:12] Out of memory while trying to allocate",
        "Traceback (most recent call last):",
        "ImportError: libcudnn.so.9: cannot open shared object file",
    ]
    assert all(tf_quiet.is_noise(line) for line in noise)
    assert not any(tf_quiet.is_noise(line) for line in real)


def test_stderr_filtered_replays_what_is_not_noise(capfd):
    with tf_quiet.stderr_filtered():
        os.write(2, b"I0000 00:00:1.0    1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1.0    1 some_op.cc:12] a real error\n")
    err = capfd.readouterr().err
    assert "oneDNN" not in err
    assert "a real error" in err
