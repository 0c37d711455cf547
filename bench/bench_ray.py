"""Ray benchmark: a local `extract` vs `extract --ray local` with 1 and 2 model actors.

Each way runs in its own process (its own Ray, started by `--ray local` as a user's would be) on
the same N pictures, and reports:

- pictures/s in the steady state: from the first finished batch to the last, read off the
  progress callback (so Ray's start-up, the actors importing TensorFlow and building the model,
  is left out, as the model build is for the local run), and the whole call's wall time;
- the driver's memory: RSS when the first batch is back, the peak after it (sampled at every
  batch), the growth between the two (flat memory: a few MiB, not a queue of pictures), and
  the process's lifetime peak (VmHWM, imports included);
- for Ray, the RSS of the local cluster's processes at the end (actors, raylet, object store
  pages they touched): memory the driver does not hold.

    .venv/bin/python bench/bench_ray.py                      # MobileNet 0.25, 600 pictures: ~4 min here
    .venv/bin/python bench/bench_ray.py --synthetic --weights none --n 300
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

from _common import (  # noqa: E402
    add_common_options,
    cpu_cores,
    describe_device,
    describe_load,
    device_info,
    finish,
    load_average,
    make_dataset,
    model_config,
    peak_rss_mb,
    resolve_common,
    rss_mb,
    source_pictures,
    table,
)

WAYS = {"local": ("local extract", None), "ray1": ("--ray local, 1 actor", 1), "ray2": ("--ray local, 2 actors", 2)}


def child(args) -> None:
    """One extraction in this process; prints one JSON line with its figures."""
    import psutil

    from headstart.extractor.runner import extract

    config = model_config(args)
    label, actors = WAYS[args.child]
    marks: list[tuple[float, int, float]] = []  # (time, pictures handled, driver RSS MiB)

    def progress(done: int, total: int, skipped: int) -> None:
        marks.append((time.perf_counter(), done, rss_mb()))

    t0 = time.perf_counter()
    res = extract(
        args.data,
        Path(args.out),
        config,
        batch_size=args.batch_size,
        workers=actors if actors else args.workers,
        ray="local" if actors else None,
        progress=progress,
    )
    wall = time.perf_counter() - t0
    cluster_mb = sum(p.memory_info().rss for p in psutil.Process().children(recursive=True)) / 2**20
    batches = [m for m in marks if m[1] > 0]
    first, last = batches[0], batches[-1]
    steady = (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")
    print(
        "JSON "
        + json.dumps(
            {
                "way": args.child,
                "n": res.extracted + res.skipped,
                "pps_steady": steady,
                "wall_s": wall,
                "first_batch_s": first[0] - t0,
                "done_at_first_batch": first[1],
                "pps_whole": res.extracted / wall,
                "rss_first_batch_mb": first[2],
                "rss_peak_after_first_mb": max(m[2] for m in batches),
                "rss_end_mb": last[2],
                "rss_peak_life_mb": peak_rss_mb(),
                "cluster_rss_end_mb": cluster_mb if actors else 0.0,
            }
        ),
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(parser, default_n={"mobilenet": 600, "vgg16": 128})
    parser.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = resolve_common(parser, parser.parse_args(argv))
    if args.child:
        return child(args)

    t_start = time.perf_counter()
    cores = cpu_cores()
    info = device_info(with_tensorflow=True)
    print(f"device: {describe_device(info)}")
    print(describe_load(cores) + " (at the start)")
    result = {"device": info, "args": {k: str(v) for k, v in vars(args).items()}, "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        pictures, where = source_pictures(args, work)
        data = make_dataset(pictures, args.n, work / "data")
        print(
            f"pictures: {args.n} from {where}; {args.backbone} alpha {args.alpha}, weights {args.weights}, "
            f"batch {args.batch_size}"
        )
        runs = {}
        for way in WAYS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                way,
                "--out",
                str(work / f"{way}.h5"),
                "--data",
                str(data),
                "--n",
                str(args.n),
                "--backbone",
                args.backbone,
                "--batch-size",
                str(args.batch_size),
                "--precision",
                args.precision,
                "--weights",
                args.weights,
            ]
            if args.alpha:
                cmd += ["--alpha", str(args.alpha)]
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{way} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            runs[way] = json.loads(line[5:])
            r = runs[way]
            print(
                f"  {WAYS[way][0]:<24} {r['pps_steady']:7.1f} pictures/s  wall {r['wall_s']:5.1f} s  "
                f"driver RSS growth {r['rss_peak_after_first_mb'] - r['rss_first_batch_mb']:5.1f} MiB",
                flush=True,
            )
    ref = runs["local"]
    rows = []
    for way, r in runs.items():
        rows.append(
            [
                WAYS[way][0],
                r["pps_steady"],
                r["pps_steady"] / ref["pps_steady"],
                r["pps_whole"],
                r["pps_whole"] / ref["pps_whole"],
                r["wall_s"],
                r["first_batch_s"],
                r["rss_first_batch_mb"],
                r["rss_peak_after_first_mb"],
                r["rss_peak_after_first_mb"] - r["rss_first_batch_mb"],
                r["rss_peak_life_mb"],
                r["cluster_rss_end_mb"],
            ]
        )
    print()
    print(
        "pictures/s = after the first batch (start-up left out; with Ray, decoding tasks run ahead while the\n"
        "actors start, so on a small N this is close to the model alone); whole = N / wall time of the call."
    )
    print(
        table(
            [
                "way",
                "pictures/s",
                "ratio to local",
                "whole pictures/s",
                "whole ratio",
                "wall s",
                "first batch s",
                "driver RSS at 1st batch MiB",
                "driver peak after MiB",
                "growth MiB",
                "driver lifetime peak MiB",
                "Ray processes RSS MiB",
            ],
            rows,
        )
    )
    for way in ("ray1", "ray2"):
        r = runs[way]
        result[f"ratio_pps_{way}_to_local"] = r["pps_steady"] / ref["pps_steady"]
        result[f"ratio_pps_whole_{way}_to_local"] = r["pps_whole"] / ref["pps_whole"]
        result[f"ratio_peak_{way}_to_local"] = r["rss_peak_life_mb"] / ref["rss_peak_life_mb"]
        print(
            f"{WAYS[way][0]}: {result[f'ratio_pps_{way}_to_local']:.2f} x the local pictures/s after the first "
            f"batch, {result[f'ratio_pps_whole_{way}_to_local']:.2f} x over the whole call; driver lifetime "
            f"peak {result[f'ratio_peak_{way}_to_local']:.2f} x the local run's, growth after the first batch "
            f"{r['rss_peak_after_first_mb'] - r['rss_first_batch_mb']:.1f} MiB"
        )
    result["runs"] = runs
    finish(result, t_start, cores, args.json)


if __name__ == "__main__":
    main()
