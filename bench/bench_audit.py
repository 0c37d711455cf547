"""Benchmark of `headstart audit` on a synthetic feature cache: seconds per step and peak memory.

Writes a synthetic cache of ``--rows`` x ``--dim`` float16 features (default 25,000 x 4,096, Dogs vs
Cats through VGG16 fc2: 200 MB; the same features as `bench_heads.py`, with a content digest per
row and ``--copies`` planted duplicate rows), then runs the whole audit (`headstart.audit.audit`,
montages off: there are no pictures) in a child process, and prints its seconds per step, wall
seconds, and peak resident memory (``ru_maxrss`` from ``os.wait4``) next to a child that only
imports the libraries and opens the cache (the floor). The features alone would take
rows x dim x 4 bytes as float32: the audit reads them a block at a time. The child's CPU seconds
(user + system) are printed too: on a shared machine the wall time depends on the load, the CPU
time much less.

    python bench/bench_audit.py                          # full size, about a minute here
    python bench/bench_audit.py --rows 2000 --dim 256    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, finish  # noqa: E402

FINGERPRINT = {  # a complete fingerprint (the tiny test backbone's): caches must be readable back
    "backbone": "tiny",
    "layer": "embed",
    "pooling": None,
    "alpha": None,
    "weights": "none",
    "seed": 0,
    "keras_version": None,
    "input_size": 32,
    "resize": "squash",
    "jpeg_draft": True,
    "preprocessing": "keras.applications.mobilenet.preprocess_input",
    "precision": "float32",
    "dtype": "float16",
    "backend": "tensorflow",
}


def write_cache(path: Path, rows: int, dim: int, classes: int, copies: int, seed: int = 0) -> float:
    """bench_heads' synthetic features plus a sha256 per row; ``copies`` rows repeat earlier rows exactly."""
    from headstart.cache import CacheHeader, CacheWriter

    names = tuple(f"class{k}" for k in range(classes))
    header = CacheHeader(dim=dim, dtype="float16", fingerprint=FINGERPRINT, class_names=names, root="/synthetic")
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.5, dim).astype(np.float32)
    shift = rng.normal(0, 4 / np.sqrt(2 * dim), (classes, dim)).astype(np.float32)
    t0 = time.perf_counter()
    first = None
    with CacheWriter(path, header) as w:
        for start in range(0, rows, 2048):
            n = min(2048, rows - start)
            y = rng.integers(0, classes, n)
            x = np.maximum(base + shift[y] + rng.normal(0, 1.0, (n, dim)).astype(np.float32), 0)
            digests = [f"{start + i:064x}" for i in range(n)]
            if first is None:
                first = (x[:copies].copy(), y[:copies].copy())
            if start + n >= rows and copies:  # the last rows repeat the first ones, same bytes
                x[-copies:], y[-copies:] = first
                digests[-copies:] = [f"{i:064x}" for i in range(copies)]
            w.append(x.astype(np.float16), y, [f"{names[k]}/{start + i}.jpg" for i, k in enumerate(y)], sha256=digests)
            w.commit()
        w.close(complete=True)
    return time.perf_counter() - t0


def child(mode: str, cache: str) -> None:
    t0 = time.perf_counter()
    from headstart.audit import audit
    from headstart.cache import open_cache

    if mode == "floor":
        with open_cache(cache) as c:
            len(c)
        print(json.dumps({"wall_seconds": time.perf_counter() - t0}))
        return
    t1 = time.perf_counter()
    result = audit(cache, None, montages=False)
    print(
        json.dumps(
            {
                "wall_seconds": time.perf_counter() - t0,
                "audit_seconds": time.perf_counter() - t1,
                "steps": result.seconds,
                "label_issues": len(result.label_issues),
                "duplicate_groups": len(result.duplicates),
                "exact_groups": sum(g["exact"] for g in result.duplicates),
                "dims": result.settings["dims"],
                "explained": result.settings["explained_variance"],
            }
        )
    )


def run_child(mode: str, cache: Path) -> dict:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    out: dict[str, str] = {}
    reader = threading.Thread(target=lambda: out.update(stdout=proc.stdout.read(), stderr=proc.stderr.read()))
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} failed:\n{out['stderr'][-3000:]}")
    scale = 1 if sys.platform == "darwin" else 1024
    return {
        **json.loads(out["stdout"].strip().splitlines()[-1]),
        "peak_rss_mb": usage.ru_maxrss * scale / 2**20,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=25_000)
    ap.add_argument("--dim", type=int, default=4_096)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--copies", type=int, default=20, help="exact duplicate rows planted")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the cache (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    cores = cpu_cores()
    print(describe_load(cores))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        cache = Path(tmp) / "synthetic.h5"
        write_s = write_cache(cache, args.rows, args.dim, args.classes, args.copies)
        size_mb = cache.stat().st_size / 2**20
        print(
            f"cache: {args.rows:,} x {args.dim:,} float16, {args.classes} classes, {size_mb:.0f} MiB "
            f"(written in {write_s:.1f} s); the features as float32 would be "
            f"{args.rows * args.dim * 4 / 2**20:.0f} MiB"
        )
        floor = run_child("floor", cache)
        res = run_child("audit", cache)
    steps = "  ".join(f"{k} {v:.1f}" for k, v in res["steps"].items())
    print(
        f"\naudit: {res['audit_seconds']:.1f} s ({steps}); whole child {res['wall_seconds']:.1f} s, "
        f"{res['cpu_seconds']:.1f} CPU seconds (imports included) on {cores} cores: on an idle machine the wall "
        f"time is about {res['cpu_seconds'] / cores:.0f}-{res['cpu_seconds']:.0f} s"
    )
    print(
        f"peak RSS: audit {res['peak_rss_mb']:.0f} MB, floor (imports + open) {floor['peak_rss_mb']:.0f} MB, "
        f"difference {res['peak_rss_mb'] - floor['peak_rss_mb']:.0f} MB"
    )
    print(
        f"found: {res['exact_groups']} exact groups of {args.copies} planted, {res['duplicate_groups']} groups in all, "
        f"{res['label_issues']} label issues; search on {res['dims']} components "
        f"({100 * res['explained']:.1f} % of the sum of squares)"
    )
    print(f"target: under 60 s -> {'met' if res['audit_seconds'] < 60 else 'NOT met'}")
    finish(
        {"rows": args.rows, "dim": args.dim, "write_seconds": write_s, "floor": floor, "audit": res},
        t_start,
        cores,
        args.json,
    )


if __name__ == "__main__":
    main()
