"""Extraction benchmark: the headstart pipeline vs the model alone, vs the usual Keras ways, and its memory.

Prints ratios measured side by side in one run (no figure is asserted):

  a. pictures/s of `headstart.extractor.runner.extract` vs the same model alone on pre-decoded
     pictures (target ratio >= 0.95), with where the pipeline's main thread spends its time;
  b. the notebook way (load_img for every picture, then predict), image_dataset_from_directory
     + predict, and headstart's extract: pictures/s and peak RSS, each in its own process;
  c. peak RSS of extract and of the notebook way on N and on 4N pictures (target <= 1.1 for extract).

    .venv/bin/python bench/bench_extract.py --backbone mobilenet
    .venv/bin/python bench/bench_extract.py --backbone vgg16 --json vgg16.json
    .venv/bin/python bench/bench_extract.py --synthetic            # any machine, no ../shared
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Stopwatch,
    add_common_options,
    dataset_paths,
    describe_device,
    describe_load,
    device_info,
    finish,
    load_average,
    make_dataset,
    model_config,
    peak_rss_mb,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    resolve_common,
    rss_mb,
    source_pictures,
    table,
)

DEFAULT_N = {"mobilenet": 400, "vgg16": 64}  # whole batches of 32: no padded last batch
DEFAULT_REPEAT = {"mobilenet": 3, "vgg16": 2}
CHILD_PREFIX = "CHILD_RESULT "
WAYS = {
    "notebook": "(a) notebook: load_img each + predict",
    "tfdata": "(b) image_dataset_from_directory + predict",
    "extract": "(c) headstart extract",
}


# -- part a: the pipeline vs the model alone ---------------------------------------------------


class TimedEmbedder:
    """Wraps an `Embedder`: same interface, counts the seconds spent in its calls."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, pixels):
        t0 = time.perf_counter()
        try:
            return self.inner(pixels)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


@contextlib.contextmanager
def timed_writes(write_seconds: list[float]):
    """Add the time `runner.extract` spends in the cache writer's append/add_failed/commit to
    ``write_seconds[0]``. Only the benchmark's process is patched, and only inside the block."""
    from headstart.extractor import runner

    base = runner.CacheWriter

    def timed(name):
        method = getattr(base, name)

        def wrapper(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return method(self, *a, **k)
            finally:
                write_seconds[0] += time.perf_counter() - t0

        return wrapper

    runner.CacheWriter = type("TimedCacheWriter", (base,), {n: timed(n) for n in ("append", "add_failed", "commit")})
    try:
        yield
    finally:
        runner.CacheWriter = base


def warm_embedder(config, batch_size: int):
    """Build headstart's `Embedder` and run one batch through it; returns (embedder, build s, warm s)."""
    import numpy as np

    from headstart.extractor.embed import Embedder

    with Stopwatch() as build:
        embedder = Embedder(config, batch_size)
    zeros = [np.zeros((config.input_size, config.input_size, 3), np.uint8)] * batch_size
    with Stopwatch() as warm:
        embedder(zeros)
    return embedder, build.seconds, warm.seconds


def part_a(args, config, data: Path, work: Path, info: dict) -> dict:
    from headstart.extractor.decode import load_image
    from headstart.extractor.embed import default_workers
    from headstart.extractor.runner import extract

    workers = args.workers or default_workers()
    paths = dataset_paths(data)
    size = (config.input_size, config.input_size)
    load_image(paths[0], size, config.resize, config.jpeg_draft)
    with Stopwatch() as dec:  # single thread, same settings as extract: decode rate per core
        pixels = [load_image(p, size, config.resize, config.jpeg_draft) for p in paths]
    embedder, build_s, warm_s = warm_embedder(config, args.batch_size)
    batches = [pixels[i : i + args.batch_size] for i in range(0, len(pixels), args.batch_size)]
    n = len(paths)

    model_runs, pipe_runs = [], []
    for r in range(args.repeat):  # interleaved, so a busy moment on a shared machine hits both
        with Stopwatch() as sw:
            for b in batches:
                embedder(b)
        model_runs.append(sw.seconds)
        timed = TimedEmbedder(embedder)
        write_s = [0.0]
        with timed_writes(write_s), Stopwatch() as sw:  # extract is handed the built, warm model
            res = extract(
                data, work / f"pipeline-{r}.h5", config, batch_size=args.batch_size, workers=workers, embedder=timed
            )
        assert res.extracted == n, (res.extracted, n, res.failed[:3])
        pipe_runs.append({"seconds": sw.seconds, "model_s": timed.seconds, "write_s": write_s[0]})
    model_s = min(model_runs)
    best = min(pipe_runs, key=lambda d: d["seconds"])

    # extract exactly as a user calls it: it builds its own model; timed from the first to the last batch.
    marks: list[tuple[float, int]] = []
    t_call = time.perf_counter()
    with Stopwatch() as total:
        extract(
            data,
            work / "pipeline-own-model.h5",
            config,
            batch_size=args.batch_size,
            workers=workers,
            progress=lambda done, tot, skipped: marks.append((time.perf_counter(), done)),
        )
    batch_marks = [m for m in marks if m[1] > 0]
    steady = None
    if len(batch_marks) >= 2:
        (t1, d1), (t2, d2) = batch_marks[0], batch_marks[-1]
        steady = (d2 - d1) / (t2 - t1)
    until_first = batch_marks[0][0] - t_call if batch_marks else None

    model_rate = n / model_s
    pipe_rate = n / best["seconds"]
    decode_rate = n / dec.seconds
    cores = info["cpu_cores"]
    if info.get("gpus"):  # model on the accelerator: decode and model overlap on different chips
        ceiling = min(model_rate, cores * decode_rate)
        ceiling_note = "min(model alone, cores x decode rate per core)"
    else:  # both need the same CPU cores: their CPU-seconds add up
        ceiling = 1.0 / (1.0 / model_rate + 1.0 / (cores * decode_rate))
        ceiling_note = "1 / (1/model alone + 1/(cores x decode rate per core)): decode and model share the cores"
    return {
        "n": n,
        "workers": workers,
        "repeat": args.repeat,
        "model_alone_pps": model_rate,
        "pipeline_pps": pipe_rate,
        "ratio": pipe_rate / model_rate,
        "model_alone_runs_s": model_runs,
        "pipeline_runs_s": [d["seconds"] for d in pipe_runs],
        "pipeline_model_s": best["model_s"],
        "pipeline_write_s": best["write_s"],
        "pipeline_other_s": best["seconds"] - best["model_s"] - best["write_s"],
        "model_alone_s": model_s,
        "decode_pps_one_thread": decode_rate,
        "cpu_ceiling_pps": ceiling,
        "ceiling_ratio": ceiling / model_rate,
        "ceiling_note": ceiling_note,
        "build_s": build_s,
        "warm_s": warm_s,
        "own_model_total_s": total.seconds,
        "own_model_total_pps": n / total.seconds,
        "own_model_steady_pps": steady,
        "own_model_until_first_batch_s": until_first,
    }


def print_part_a(a: dict, args) -> None:
    print(
        f"\n== a. pipeline vs model alone: {a['n']} pictures, batch {args.batch_size}, "
        f"{a['workers']} decode workers, best of {a['repeat']} interleaved runs =="
    )
    print(
        "model alone = Embedder(config, batch)(pre-decoded uint8 batch): preprocess + predict, "
        "no decoding, no writing.\npipeline = the whole runner.extract() call (scan, decode threads, "
        "model, HDF5 writes, close) given\n           the same already-built, warmed Embedder, so model build "
        "and graph tracing are excluded."
    )
    rows = [
        ["model alone", a["n"], a["model_alone_s"], a["model_alone_pps"], 1.0],
        ["pipeline (extract, model prebuilt)", a["n"], a["n"] / a["pipeline_pps"], a["pipeline_pps"], a["ratio"]],
    ]
    if a["own_model_steady_pps"]:
        rows.append(
            [
                "extract building its own model, 1st->last batch",
                a["n"],
                None,
                a["own_model_steady_pps"],
                a["own_model_steady_pps"] / a["model_alone_pps"],
            ]
        )
    rows.append(
        [
            "extract building its own model, whole call",
            a["n"],
            a["own_model_total_s"],
            a["own_model_total_pps"],
            a["own_model_total_pps"] / a["model_alone_pps"],
        ]
    )
    print(table(["", "pictures", "seconds", "pictures/s", "ratio to model"], rows, 2))
    print(
        f"ratio pipeline / model alone = {a['ratio']:.3f}  (target >= 0.95: "
        f"{'met' if a['ratio'] >= 0.95 else 'MISSED'})"
    )
    pipe_s = a["n"] / a["pipeline_pps"]
    print("\nwhere the pipeline's main thread spent its time (best run):")
    print(
        table(
            ["stage", "seconds", "share %"],
            [
                ["model calls (preprocess + predict)", a["pipeline_model_s"], 100 * a["pipeline_model_s"] / pipe_s],
                ["cache writes (append + commit)", a["pipeline_write_s"], 100 * a["pipeline_write_s"] / pipe_s],
                [
                    "rest: waiting for decoded pictures, scan, open/close",
                    a["pipeline_other_s"],
                    100 * a["pipeline_other_s"] / pipe_s,
                ],
                ["(model alone, for comparison)", a["model_alone_s"], None],
            ],
            2,
        )
    )
    print(
        f"decode, one thread: {a['decode_pps_one_thread']:.1f} pictures/s per core; ceiling for the pipeline "
        f"from the work alone: {a['cpu_ceiling_pps']:.1f} pictures/s = {a['ceiling_ratio']:.2f} x model alone\n"
        f"  ({a['ceiling_note']})"
    )
    print(
        f"model build {a['build_s']:.2f} s, first batch (graph tracing) {a['warm_s']:.2f} s; extract building "
        f"its own model took {a['own_model_until_first_batch_s'] or 0:.2f} s from start to its first batch"
    )


# -- parts b and c: each way in its own process -------------------------------------------------


def child(args) -> None:
    """Run one way over ``--child-data`` and print its figures as one JSON line."""
    import numpy as np

    from headstart.extractor.model import build_model
    from headstart.settings.backbones import preprocess_function

    config = model_config(args)
    data = Path(args.child_data)
    paths = dataset_paths(data)
    size = config.input_size
    out: dict = {"way": args.child, "n": len(paths)}
    if args.child == "extract":
        from headstart.extractor.runner import extract

        embedder, _, _ = warm_embedder(config, args.batch_size)
        out.update(_before_run())
        with tempfile.TemporaryDirectory() as tmp, Stopwatch() as sw:
            res = extract(
                data,
                Path(tmp) / "features.h5",
                config,
                batch_size=args.batch_size,
                workers=args.workers,
                embedder=embedder,
            )
        out["features"] = res.extracted
    else:
        import keras

        model = build_model(config)
        model.predict(np.zeros((args.batch_size, size, size, 3), np.float32), batch_size=args.batch_size, verbose=0)
        preprocess = preprocess_function(config)
        out.update(_before_run())
        if args.child == "notebook":
            from keras.utils import img_to_array, load_img

            with Stopwatch() as sw:
                images = [preprocess(img_to_array(load_img(p, target_size=(size, size)))) for p in paths]
                x = np.array(images)
                feats = model.predict(x, batch_size=args.batch_size, verbose=0)
        else:
            with Stopwatch() as sw:
                ds = keras.utils.image_dataset_from_directory(
                    data, image_size=(size, size), batch_size=args.batch_size, shuffle=False, verbose=False
                )
                ds = ds.map(lambda images, labels: preprocess(images))
                feats = model.predict(ds, verbose=0)
        out["features"] = int(feats.shape[0])
    out["seconds"] = sw.seconds
    out["pps"] = out["n"] / sw.seconds
    out["rss_peak_whole_mb"] = peak_rss_mb()  # ru_maxrss: the process' whole life, imports included
    since = peak_rss_since_reset_mb() if out["peak_reset"] else None
    out["rss_peak_mb"] = since if since is not None else out["rss_peak_whole_mb"]  # peak of the timed run
    print(CHILD_PREFIX + json.dumps(out), flush=True)


def _before_run() -> dict:
    """RSS once imports and model are ready; whole-process peak so far; then reset the peak."""
    return {"rss_base_mb": rss_mb(), "rss_peak_build_mb": peak_rss_mb(), "peak_reset": reset_peak_rss()}


def run_child(args, way: str, data: Path) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        way,
        "--child-data",
        str(data),
        "--backbone",
        args.backbone,
        "--batch-size",
        str(args.batch_size),
        "--precision",
        args.precision,
        "--weights",
        args.weights,
    ]
    if args.alpha is not None:
        cmd += ["--alpha", str(args.alpha)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"The {way} child process failed (exit {proc.returncode}); its output is above.")
    result = json.loads(lines[-1][len(CHILD_PREFIX) :])
    result["process_s"] = time.perf_counter() - t0
    print(
        f"  {way:9s} {result['n']:5d} pictures: {result['pps']:8.1f} pictures/s, "
        f"peak RSS {result['rss_peak_mb']:7.0f} MiB  (process {result['process_s']:.0f} s)",
        flush=True,
    )
    return result


def print_part_b(b: dict) -> None:
    ref = b["extract"]
    print(f"\n== b. the usual ways, same {ref['n']} pictures and model, one process each ==")
    print(
        "timed: from the first file read to the features in hand (imports, model build and one warm-up\n"
        "batch excluded). RSS after build = resident memory once imports and model are ready; peak RSS\n"
        "= peak of the timed run (VmHWM, reset after the build"
        + (")" if ref.get("peak_reset") else "; reset NOT possible here: whole-process peak)")
        + "; whole = ru_maxrss at the end,\nthe peak over the process' whole life (TensorFlow's import included)."
    )
    rows = []
    for way, label in WAYS.items():
        r = b[way]
        rows.append(
            [
                label,
                r["pps"],
                r["pps"] / ref["pps"],
                r["rss_base_mb"],
                r["rss_peak_mb"],
                r["rss_peak_mb"] - r["rss_base_mb"],
                r["rss_peak_whole_mb"],
            ]
        )
    print(
        table(
            [
                "way",
                "pictures/s",
                "ratio to (c)",
                "RSS after build MiB",
                "peak RSS MiB",
                "peak - build MiB",
                "whole MiB",
            ],
            rows,
            2,
        )
    )


def print_part_c(b: dict, c: dict) -> None:
    print(f"\n== c. flat memory: peak RSS on N = {b['extract']['n']} and 4N = {c['extract']['n']} pictures ==")
    rows = []
    for way in ("extract", "notebook"):
        small, big = b[way], c[way]
        grow_small = small["rss_peak_mb"] - small["rss_base_mb"]
        grow_big = big["rss_peak_mb"] - big["rss_base_mb"]
        rows.append(
            [
                WAYS[way],
                small["rss_peak_mb"],
                big["rss_peak_mb"],
                big["rss_peak_mb"] / small["rss_peak_mb"],
                grow_small,
                grow_big,
                big["rss_peak_whole_mb"] / small["rss_peak_whole_mb"],
            ]
        )
    print(
        table(
            ["way", "peak N MiB", "peak 4N MiB", "ratio 4N/N", "above build N", "above build 4N", "whole-life ratio"],
            rows,
            2,
        )
    )
    ratio = c["extract"]["rss_peak_mb"] / b["extract"]["rss_peak_mb"]
    print(f"extract peak RSS ratio 4N/N = {ratio:.3f}  (target <= 1.1: {'met' if ratio <= 1.1 else 'MISSED'})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, default_n=DEFAULT_N)
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="interleaved runs of part a; best is kept (default: mobilenet 3, vgg16 2)",
    )
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. 'a' or 'bc' (default abc)")
    parser.add_argument("--child", choices=tuple(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    args = resolve_common(parser, parser.parse_args(argv))
    args.repeat = args.repeat or DEFAULT_REPEAT[args.backbone]
    if args.child:
        return child(args)

    t_start = time.perf_counter()
    info = device_info()
    config = model_config(args)
    args.precision = config.precision  # children get the resolved precision
    print(
        f"bench_extract: {args.backbone} ({config.layer}, weights {args.weights}, alpha {args.alpha}), "
        f"precision {config.precision}, batch {args.batch_size}, N = {args.n}"
    )
    print(f"device: {describe_device(info)}")
    print(describe_load(info["cpu_cores"]), flush=True)
    result = {
        "bench": "extract",
        "backbone": args.backbone,
        "layer": config.layer,
        "weights": args.weights,
        "alpha": args.alpha,
        "precision": config.precision,
        "batch_size": args.batch_size,
        "n": args.n,
        "device": info,
    }
    result["load_average_start"] = load_average()
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        work = Path(tmp)
        pictures, where = source_pictures(args, work)
        print(
            f"pictures: {where}; N = {args.n}"
            + (f" ({len(pictures)} distinct, cycled under new names)" if args.n > len(pictures) else "")
        )
        result["pictures"] = where
        data_n = make_dataset(pictures, args.n, work / "data-n")
        if "a" in args.parts:
            result["a"] = part_a(args, config, data_n, work, info)
            print_part_a(result["a"], args)
        if "b" in args.parts or "c" in args.parts:
            print("\nchild processes:", flush=True)
            b = {way: run_child(args, way, data_n) for way in WAYS}
            result["b"] = b
            if "c" in args.parts:
                data_4n = make_dataset(pictures, 4 * args.n, work / "data-4n")
                result["c"] = {way: run_child(args, way, data_4n) for way in ("extract", "notebook")}
            if "b" in args.parts:
                print_part_b(b)
            if "c" in args.parts:
                print_part_c(b, result["c"])
    finish(result, t_start, info["cpu_cores"], args.json)


if __name__ == "__main__":
    main()
