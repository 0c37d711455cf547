"""bench/device_check.sh and device_check.py: the GPU check runs end to end at a tiny size on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import device_check  # noqa: E402


def test_generate_writes_jpegs_of_photo_sizes(tmp_path):
    from PIL import Image

    info = device_check.generate(tmp_path / "pics", 6, jobs=1)
    files = sorted((tmp_path / "pics").rglob("*.jpg"))
    assert info["pictures"] == 6 and len(files) == 6
    assert {p.parent.name for p in files} == {"Cat", "Dog"}
    for p in files:
        w, h = Image.open(p).size
        assert 300 <= w <= 500 and 240 <= h <= 500


def test_table_shows_rows_and_failures():
    ok = {
        "precision": "float16",
        "backend": "torch",
        "batch": 256,
        "setup_s": 3.0,
        "model_on_device_pps": 3000.0,
        "model_alone_pps": 2000.0,
        "pipeline_pps": 1000.0,
        "pipeline_over_model": 0.5,
        "pipeline_model_share": 0.4,
        "alone_copy_share": 0.1,
        "alone_preprocess_share": 0.3,
        "alone_predict_share": 0.6,
    }
    ok["verdict"] = device_check.verdict(ok, decode_pps=1050.0)
    result = {
        "device": {"gpu": "NVIDIA H200", "cpu_cores": 16, "keras": "3"},
        "pictures": 8000,
        "backbone": "vgg16",
        "input_size": 224,
        "workers": 16,
        "decode_pps": 1050.0,
        "rows": [ok, {"precision": "float32", "backend": "torch", "error": "RuntimeError: CUDA out of memory"}],
    }
    text = device_check.render([result])
    assert "NVIDIA H200" in text and "decode-bound" in text
    assert "FAILED: RuntimeError: CUDA out of memory" in text


@pytest.mark.slow
def test_device_check_runs_at_a_tiny_size_on_cpu(tmp_path):
    """The whole script (generate, measure, table) with 16 pictures and the tiny backbone (~30 s)."""
    env = dict(
        os.environ,
        HS_CHECK_N="16",
        HS_CHECK_BACKBONE="tiny",
        HS_CHECK_BACKENDS="tensorflow",
        HS_CHECK_WORKERS="2",
        HS_CHECK_JOBS="2",
        HS_CHECK_PYTHON=sys.executable,
        HS_CHECK_WORK=str(tmp_path / "work"),
        HS_CHECK_BACKBONES_SECONDS="0",  # the every-backbone table is minutes even on a GPU
        OUT=str(tmp_path / "out"),
    )
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "device_check.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== results" in proc.stdout and "whole check" in proc.stdout
    results = json.loads((tmp_path / "out" / "device_check.json").read_text())
    rows = results[0]["rows"]
    assert [r["precision"] for r in rows] == ["float16", "float32"], rows  # a failed measure is one "all" row
    assert all("error" not in r and r["pipeline_extracted"] == 16 for r in rows)
    assert (tmp_path / "out" / "device_check.log").read_text().count("== results") == 1
