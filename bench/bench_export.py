"""Peak memory and time of `headstart export` per format, for VGG16 fc2 (528 MB of float32 weights).

    .venv/bin/python bench/bench_export.py                         # VGG16 fc2, all formats, ~5 min here
    .venv/bin/python bench/bench_export.py --backbone mobilenet --formats keras,onnx

A run folder is made once from a cache of random feature rows with the backbone's fingerprint
(random weights: the same size as ImageNet's). Then each format is exported in a fresh process
(``headstart.ship.export.export``, with its check of the written file), which reports its own peak
resident memory (ru_maxrss) and the time; the baseline is a process that only builds the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, device_info, finish, table  # noqa: E402

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
run, out, fmt = sys.argv[1:4]
if fmt == "build-only":
    from headstart.ship.model import classifier_model, pixel_model
    from headstart.heads.run_reader import load_run
    from headstart.ship.runs import run_config
    info, head = load_run(run)
    model = classifier_model(pixel_model(run_config(info, run)), head.to_keras(), head.n_features_in_, head.classes_, 2)
    size = 0
else:
    from headstart.ship.export import export
    result = export(run, out, fmt)
    from pathlib import Path
    p = Path(out)
    size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
print("RESULT " + json.dumps({"format": fmt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             "seconds": time.perf_counter() - t0, "size_mb": size / 1e6}))
"""


def make_run(workdir: Path, backbone: str) -> Path:
    import numpy as np

    from headstart.cache import CacheHeader, CacheWriter
    from headstart.extractor.options import make_config
    from headstart.heads.training import train

    layer = "fc2" if backbone == "vgg16" else None
    config = make_config(
        backbone, layer, weights="none", precision="float32", alpha=0.25 if backbone == "mobilenet" else None
    )
    dim = {"vgg16": 4096, "mobilenet": 256}[backbone]
    rng = np.random.default_rng(0)
    n = 200
    header = CacheHeader(
        dim=dim, dtype="float16", fingerprint=config.fingerprint(), class_names=("a", "b"), root=str(workdir)
    )
    with CacheWriter(workdir / "cache.h5", header) as w:
        y = rng.integers(0, 2, n)
        w.append(rng.normal(0, 1, (n, dim)).astype("float32") + y[:, None], y.tolist(), [f"p{i}.jpg" for i in range(n)])
        w.close(complete=True)
    train(workdir / "cache.h5", "logreg", workdir / "run", plots=False)
    return workdir / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=("vgg16", "mobilenet"), default="vgg16")
    parser.add_argument("--formats", default="keras,saved_model,onnx,litert")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    t_start = time.perf_counter()
    cores = cpu_cores()
    device = device_info()
    print(describe_load(cores))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        run = make_run(Path(tmp), args.backbone)
        for fmt in ["build-only", *args.formats.split(",")]:
            out = Path(tmp) / (f"model-{fmt}.keras" if fmt == "keras" else f"model-{fmt}")
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(run), str(out), fmt], capture_output=True, text=True
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                lines = [ln for ln in proc.stderr.strip().splitlines() if "Error" in ln or "error" in ln]
                error = (lines or proc.stderr.strip().splitlines() or ["?"])[-1][:300]
                print(f"{fmt}: failed: {error}")
                rows.append({"format": fmt, "error": error})
                continue
            rows.append(json.loads(line[len("RESULT ") :]))
            print(f"{fmt}: peak {rows[-1]['peak_rss_mb']:.0f} MiB, {rows[-1]['seconds']:.0f} s", flush=True)
    base = next((r["peak_rss_mb"] for r in rows if r["format"] == "build-only" and "peak_rss_mb" in r), None)
    for r in rows:
        if base and "peak_rss_mb" in r:
            r["peak_vs_build_only"] = r["peak_rss_mb"] / base
    print(
        table(
            ["format", "peak MiB", "x build-only", "seconds", "size MB"],
            [
                [r["format"], r.get("peak_rss_mb"), r.get("peak_vs_build_only"), r.get("seconds"), r.get("size_mb")]
                for r in rows
            ],
            digits=1,
        )
    )
    finish({"device": device, "backbone": args.backbone, "rows": rows}, t_start, cores, args.json)


if __name__ == "__main__":
    main()
