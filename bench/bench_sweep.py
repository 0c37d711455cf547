"""Benchmark of `headstart sweep`: one sweep process against one `train` process per setting.

Writes the synthetic cache of `bench_heads.py` (default 25,000 x 4,096 float16, 200 MB) and runs,
each in a child process of its own:

* mlp: a 12-trial grid (hidden_units 128,256,512 x dropout 0.2,0.5 x learning_rate 1e-3,3e-4) as
  one ``sweep`` (features loaded once, trials in parallel where memory allows), then the same 12
  settings as 12 ``train`` processes one after the other;
* logreg: a 6-value grid of C the same two ways;
* executor (``--parts executor``): the logreg sweep with 1 worker, 2 forked processes and 2 threads.

For each: wall seconds, and peak memory of the whole process tree (the sum of the PSS of the
process and its workers, sampled every 0.2 s: shared pages are counted once), and for the separate
trains the sum of their seconds and the largest peak. Sweeps run with ``--no-plots`` and the trains
too. Every trial of the MLP stops after ``--epochs`` (default 5) epochs at most (patience 2), so the
benchmark takes minutes, not an hour.

    python bench/bench_sweep.py                          # full size (about 10-20 min on 2 busy cores)
    python bench/bench_sweep.py --rows 3000 --dim 256    # a quick run
    python bench/bench_sweep.py --parts logreg,executor
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, finish, table  # noqa: E402
from bench_heads import write_cache  # noqa: E402

MLP_GRID = {"hidden_units": [128, 256, 512], "dropout": [0.2, 0.5], "learning_rate": [1e-3, 3e-4]}
LOGREG_GRID = {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]}


def child(kind: str, spec: str) -> None:
    """In the child process: one sweep or one train through the library, as the CLI calls it; print JSON."""
    args = json.loads(spec)
    t0 = time.perf_counter()
    if kind == "sweep":
        from headstart.heads import sweep as S

        r = S.sweep(
            args["cache"],
            args["head"],
            args["out"],
            grid=args["grid"],
            params=args["fixed"],
            jobs=args["jobs"],
            executor=args["executor"],
            plots=False,
        )
        print(
            json.dumps(
                {
                    "wall_seconds": time.perf_counter() - t0,
                    "jobs": r.jobs,
                    "executor": r.executor,
                    "best": r.trials[0]["params"],
                    "best_val": r.trials[0]["val"]["accuracy"],
                    "test_accuracy": r.best.test_accuracy,
                    "trial_seconds": sum(t["seconds"] for t in r.trials),
                }
            )
        )
    else:
        from headstart.heads import training

        r = training.train(args["cache"], args["head"], args["out"], params=args["params"], plots=False)
        print(
            json.dumps(
                {
                    "wall_seconds": time.perf_counter() - t0,
                    "fit_seconds": r.fit_seconds,
                    "val_accuracy": r.val_accuracy,
                    "test_accuracy": r.test_accuracy,
                }
            )
        )


def _tree_memory_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total / 2**20


def run_child(kind: str, spec: dict) -> dict:
    """Run a child; returns its JSON line plus ``peak_mb`` (process tree PSS, sampled) and ``seconds``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_memory_mb(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_mb": peak[0], "seconds": time.perf_counter() - t0}


def settings(grid: dict) -> list[dict]:
    import itertools

    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def compare(name: str, head: str, grid: dict, fixed: dict, cache: Path, folder: Path, result: dict) -> list:
    sw = run_child(
        "sweep",
        {
            "cache": str(cache),
            "head": head,
            "out": str(folder / f"sweep-{name}"),
            "grid": grid,
            "fixed": fixed,
            "jobs": None,
            "executor": None,
        },
    )
    print(f"  {name} sweep: {sw['seconds']:.0f} s, {sw['jobs']} at a time ({sw['executor']})", file=sys.stderr)
    trains = []
    for i, s in enumerate(settings(grid)):
        trains.append(
            run_child(
                "train",
                {"cache": str(cache), "head": head, "out": str(folder / f"train-{name}-{i}"), "params": {**fixed, **s}},
            )
        )
        print(f"  {name} train {i + 1}: {trains[-1]['seconds']:.0f} s", file=sys.stderr)
    total = sum(t["seconds"] for t in trains)
    peak = max(t["peak_mb"] for t in trains)
    result[name] = {
        "sweep": sw,
        "trains": trains,
        "trains_seconds": total,
        "trains_peak_mb": peak,
        "speedup": total / sw["seconds"],
        "n": len(trains),
    }
    return [
        (f"{name}: sweep of {len(trains)} ({sw['jobs']} at a time)", sw["seconds"], sw["peak_mb"], sw["test_accuracy"]),
        (f"{name}: {len(trains)} train processes", total, peak, max(t["test_accuracy"] for t in trains)),
        (f"{name}: trains / sweep", total / sw["seconds"], None, None),
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=25_000)
    ap.add_argument("--dim", type=int, default=4_096)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5, help="Most epochs of each MLP trial.")
    ap.add_argument("--parts", default="mlp,logreg,executor")
    ap.add_argument("--dir", type=Path, default=None, help="Where to write the cache (default: a temp folder).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    cores = cpu_cores()
    parts = set(args.parts.split(","))

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    folder = Path(tmp.name)
    cache = folder / "synthetic.h5"
    write_s = write_cache(cache, args.rows, args.dim, args.classes)
    print(
        f"cache: {args.rows:,} x {args.dim:,} float16, {args.classes} classes, "
        f"{cache.stat().st_size / 2**20:.0f} MiB (written in {write_s:.1f} s); {cores} cores"
    )
    print(describe_load(cores) + " (at the start)")
    result: dict = {"rows": args.rows, "dim": args.dim, "cores": cores, "epochs": args.epochs}
    rows = []
    if "mlp" in parts:
        fixed = {"epochs": args.epochs, "patience": 2, "random_state": 0}
        rows += compare("mlp", "mlp", MLP_GRID, fixed, cache, folder, result)
    if "logreg" in parts:
        rows += compare("logreg", "logreg", LOGREG_GRID, {"random_state": 0}, cache, folder, result)
    if "executor" in parts:
        result["executor"] = {}
        for jobs, how in ((1, None), (2, "process"), (2, "thread")):
            r = run_child(
                "sweep",
                {
                    "cache": str(cache),
                    "head": "logreg",
                    "out": str(folder / f"ex-{jobs}-{how}"),
                    "grid": LOGREG_GRID,
                    "fixed": {"random_state": 0},
                    "jobs": jobs,
                    "executor": how,
                },
            )
            result["executor"][f"{jobs}-{how or 'serial'}"] = r
            rows.append((f"logreg sweep, {jobs} {how or 'serial'}", r["seconds"], r["peak_mb"], r["test_accuracy"]))
            print(f"  executor {jobs} {how}: {r['seconds']:.0f} s", file=sys.stderr)
    print()
    print(table(["", "seconds (or ratio)", "peak MB", "test acc"], rows, digits=2))
    tmp.cleanup()
    finish(result, t_start, cores, args.json)


if __name__ == "__main__":
    main()
