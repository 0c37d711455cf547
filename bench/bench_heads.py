"""Benchmark of the heads: fit seconds and peak memory of each on a synthetic feature cache.

Writes a synthetic cache of ``--rows`` x ``--dim`` float16 features (default 25,000 x 4,096, the
size of Dogs vs Cats through VGG16 fc2: 200 MB) into a temporary folder, then trains each head
with ``headstart.heads.training.train`` in a child process of its own, and prints one table: fit
seconds, wall seconds of the whole child (imports, loading, metrics), test accuracy, and the
child's peak resident memory (``ru_maxrss`` from ``os.wait4``). A first child that only imports
the libraries and opens the cache gives the memory floor.

    python bench/bench_heads.py                         # full size, the three heads
    python bench/bench_heads.py --rows 2000 --dim 256   # a quick run
    python bench/bench_heads.py --stream                # also softmax and mlp streamed from disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cache(path: Path, rows: int, dim: int, classes: int, seed: int = 0) -> float:
    """Synthetic non-negative features (like fc2 after ReLU) whose class means differ a little."""
    from headstart.cache import CacheHeader, CacheWriter

    # A complete fingerprint (the tiny backbone's, as tests/conftest.py's TINY_FINGERPRINT): caches
    # are validated when opened, and a fingerprint missing settings is refused.
    fp = {
        "backbone": "tiny",
        "layer": "embed",
        "pooling": None,
        "alpha": None,
        "weights": "none",
        "seed": seed,
        "keras_version": None,
        "input_size": 32,
        "resize": "squash",
        "jpeg_draft": True,
        "preprocessing": "keras.applications.mobilenet.preprocess_input",
        "precision": "float32",
        "dtype": "float16",
        "backend": "tensorflow",
    }
    names = tuple(f"class{k}" for k in range(classes))
    header = CacheHeader(
        dim=dim,
        dtype="float16",
        fingerprint=fp,
        class_names=names,
        root="/synthetic",
    )
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.5, dim).astype(np.float32)
    # Class means 4 noise-sd apart in all (Bayes accuracy ~98 % for two classes), spread thinly
    # over every feature, so a head has to use many of them, as with real fc2 features.
    shift = rng.normal(0, 4 / np.sqrt(2 * dim), (classes, dim)).astype(np.float32)
    t0 = time.perf_counter()
    with CacheWriter(path, header) as w:
        for start in range(0, rows, 2048):
            n = min(2048, rows - start)
            y = rng.integers(0, classes, n)
            x = np.maximum(base + shift[y] + rng.normal(0, 1.0, (n, dim)).astype(np.float32), 0)
            w.append(x.astype(np.float16), y, [f"{names[k]}/{start + i}.jpg" for i, k in enumerate(y)])
            w.commit()
        w.close(complete=True)
    return time.perf_counter() - t0


def child(head: str, cache: str, out: str, stream: str) -> None:
    """Runs in the child process: train one head (or only import, for head 'floor'); print JSON."""
    t0 = time.perf_counter()
    import keras  # noqa: F401  (the import is part of the floor)

    from headstart.cache import open_cache
    from headstart.heads import training as runs

    if head == "floor":
        with open_cache(cache) as c:
            len(c)
        print(json.dumps({"wall_seconds": time.perf_counter() - t0}))
        return
    result = runs.train(cache, head, out, plots=False, stream={"auto": None, "yes": True, "no": False}[stream])
    print(
        json.dumps(
            {
                "fit_seconds": result.fit_seconds,
                "wall_seconds": time.perf_counter() - t0,
                "test_accuracy": result.test_accuracy,
                "streamed": result.streamed,
                "fitted": json.loads((Path(out) / "run.json").read_text())["fitted"],
            }
        )
    )


def run_child(head: str, cache: Path, out: Path, stream: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", head, str(cache), str(out), stream],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    # wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux, bytes on macOS).
    stdout, stderr = "", ""
    import threading

    def drain():
        nonlocal stdout, stderr
        stdout, stderr = proc.stdout.read(), proc.stderr.read()

    reader = threading.Thread(target=drain)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{head} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    scale = 1 if sys.platform == "darwin" else 1024
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss * scale / 2**20}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=25_000)
    ap.add_argument("--dim", type=int, default=4_096)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--heads", default="softmax,logreg,mlp")
    ap.add_argument("--stream", action="store_true", help="Also train softmax and mlp streamed from the file.")
    ap.add_argument("--dir", type=Path, default=None, help="Where to write the cache (default: a temp folder).")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    folder = Path(tmp.name)
    cache = folder / "synthetic.h5"
    write_s = write_cache(cache, args.rows, args.dim, args.classes)
    size_mb = cache.stat().st_size / 2**20
    print(
        f"cache: {args.rows:,} x {args.dim:,} float16, {args.classes} classes, {size_mb:.0f} MiB "
        f"(written in {write_s:.1f} s); {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )

    jobs = [("floor", "auto")] + [(h, "auto") for h in args.heads.split(",")]
    if args.stream:
        jobs += [(h, "yes") for h in args.heads.split(",") if h != "logreg"]
    rows = []
    for head, stream in jobs:
        r = run_child(head, cache, folder / f"run-{head}-{stream}", stream)
        rows.append((head + (" (streamed)" if stream == "yes" else ""), r))
        print(f"  done {rows[-1][0]}", file=sys.stderr, flush=True)

    print(f"\n{'head':<20}{'fit s':>8}{'wall s':>8}{'chosen':>12}{'test acc':>10}{'peak RSS MB':>13}{'in memory':>11}")
    for name, r in rows:
        if name == "floor":
            print(
                f"{'(imports + open)':<20}{'-':>8}{r['wall_seconds']:>8.1f}{'-':>12}{'-':>10}"
                f"{r['peak_rss_mb']:>13.0f}{'-':>11}"
            )
            continue
        f = r["fitted"]
        chosen = f"C={f['C_']:g}" if "C_" in f else f"ep {f['best_epoch_']}/{f['n_iter_']}"
        print(
            f"{name:<20}{r['fit_seconds']:>8.1f}{r['wall_seconds']:>8.1f}{chosen:>12}{r['test_accuracy']:>10.3f}"
            f"{r['peak_rss_mb']:>13.0f}{'no' if r['streamed'] else 'yes':>11}"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
