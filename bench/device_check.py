"""GPU check: the extract pipeline vs the model alone vs decoding alone, one table; driven by device_check.sh.

Three sub-commands, each its own process (a Keras backend is chosen once per process):

    device_check.py generate --n 8000 --out DIR [--jobs 16]     # JPEGs of Dogs-vs-Cats sizes
    device_check.py measure --data DIR --json FILE [...]        # one backend (KERAS_BACKEND)
    device_check.py table FILE... [--json ALL]                  # the table of every backend

``measure`` times, for each precision (random weights: speed does not depend on them):

- decode alone: `decode_stream` with ``--workers`` threads over every picture (no Keras work);
- model on device: ``predict_on_batch`` on a batch already preprocessed and already on the
  accelerator (torch / jax), i.e. the GPU's own speed without any host work;
- model alone: headstart's `Embedder` on pre-decoded uint8 batches (copy into the batch buffer,
  `preprocess_input` on the CPU, transfer, model, features back), split into those parts;
- pipeline: the whole `extract()` call (scan, decode threads, model, HDF5 writes) into a fresh
  cache, handed the already-built `Embedder` so that model build and auto batch size are timed
  apart (``setup s``); the share of its loop spent inside model calls says what it waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- generate ----------------------------------------------------------------------------------


def _write_some(job: tuple[str, int, int, int]) -> int:
    """Write pictures ``start..stop`` of the set (a worker process); sizes and pixels seeded per picture."""
    import numpy as np
    from PIL import Image

    folder, start, stop, seed = job
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        # Dogs vs Cats: most photos are 300-500 px on each side (mean about 400 x 360).
        width, height = int(rng.integers(300, 501)), int(rng.integers(240, 501))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        arr = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        cls = ("Cat", "Dog")[i % 2]
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            Path(folder) / cls / f"{cls.lower()}.{i}.jpg", quality=90
        )
    return stop - start


def generate(out: Path, n: int, jobs: int, seed: int = 0) -> dict:
    """Write ``n`` photo-like JPEGs in ``out/Cat`` and ``out/Dog`` with ``jobs`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    for cls in ("Cat", "Dog"):
        (out / cls).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = max(1, -(-n // (jobs * 4)))
    work = [(str(out), s, min(n, s + step), seed) for s in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        written = sum(pool.map(_write_some, work))
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    return {"pictures": written, "seconds": seconds, "mib": size / 2**20, "jobs": jobs}


# -- measure -----------------------------------------------------------------------------------


def _device() -> dict:
    import keras

    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    try:
        if info["backend"] == "torch":
            import torch

            info["torch"] = torch.__version__
            info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        elif info["backend"] == "jax":
            import jax

            info["jax"] = jax.__version__
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            info["gpu"] = getattr(gpus[0], "device_kind", str(gpus[0])) if gpus else None
        elif info["backend"] == "tensorflow":
            import tensorflow as tf

            info["tensorflow"] = tf.__version__
            gpus = tf.config.list_physical_devices("GPU")
            info["gpu"] = gpus[0].name if gpus else None
    except Exception as err:  # a broken GPU stack is a finding, not a crash
        info["gpu_error"] = f"{type(err).__name__}: {err}"
    return info


def _on_device(x):
    """``x`` moved to the accelerator the backend uses (a no-op on a CPU or TensorFlow)."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.as_tensor(x).cuda()
    elif backend == "jax":
        import jax

        return jax.device_put(x)
    return x


def _sync(out) -> None:
    """Wait for the accelerator: bring a value of the output back to the host."""
    import numpy as np

    np.asarray(out[:1] if hasattr(out, "__getitem__") else out)


def _decode_all(paths, config, workers: int):
    import numpy as np

    from headstart.extractor.embed import decode_stream

    size = config.input_size
    pixels = np.empty((len(paths), size, size, 3), np.uint8)
    ok = 0
    t0 = time.perf_counter()
    for _index, arr, _reason, _digest in decode_stream(paths, config, workers, prefetch=8 * workers):
        if arr is not None:
            pixels[ok] = arr
            ok += 1
    return pixels[:ok], time.perf_counter() - t0


def measure_precision(args, paths, pixels, precision: str, work: Path) -> dict:
    import numpy as np

    from headstart.extractor.embed import Embedder
    from headstart.extractor.options import make_config
    from headstart.extractor.runner import extract

    config = make_config(
        args.backbone, weights="none", alpha=args.alpha, precision=precision, input_size=args.input_size
    )
    row: dict = {"precision": precision}
    t0 = time.perf_counter()
    embedder = Embedder(config, args.batch_size if args.batch_size == "auto" else int(args.batch_size))
    batch = embedder.batch_size
    embedder(list(pixels[:batch]))  # warm: graph tracing / compilation for this batch shape
    row.update(batch=batch, setup_s=time.perf_counter() - t0)
    n = len(pixels)
    starts = list(range(0, n, batch))

    # Model on device: a preprocessed batch that is already on the accelerator.
    x = np.zeros((batch, config.input_size, config.input_size, 3), np.float32)
    x[: min(batch, n)] = pixels[:batch]
    try:  # a backend that will not take a device tensor costs this one figure, not the row
        x_dev = _on_device(embedder._preprocess(x))
        _sync(embedder.model.predict_on_batch(x_dev))
        t0 = time.perf_counter()
        for _ in starts:
            out = embedder.model.predict_on_batch(x_dev)
        _sync(out)
        row["model_on_device_pps"] = len(starts) * batch / (time.perf_counter() - t0)
    except Exception as err:
        row["model_on_device_pps"] = None
        row["model_on_device_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"

    # Model alone: headstart's Embedder on pre-decoded batches, its parts timed one by one.
    buf = embedder._buffer
    copy_s = prep_s = model_s = 0.0
    t_all = time.perf_counter()
    for s in starts:
        t0 = time.perf_counter()
        part = pixels[s : s + batch]
        buf[len(part) :] = 0
        buf[: len(part)] = part
        t1 = time.perf_counter()
        xb = embedder._preprocess(buf)
        t2 = time.perf_counter()
        np.asarray(embedder.model.predict_on_batch(xb), dtype=np.float32)
        t3 = time.perf_counter()
        copy_s, prep_s, model_s = copy_s + t1 - t0, prep_s + t2 - t1, model_s + t3 - t2
    alone_s = time.perf_counter() - t_all
    row.update(
        model_alone_pps=n / alone_s,
        alone_copy_share=copy_s / alone_s,
        alone_preprocess_share=prep_s / alone_s,
        alone_predict_share=model_s / alone_s,
    )

    # Pipeline: extract() with the built model; seconds inside model calls counted.
    inside = [0.0]
    inner = embedder

    class Timed:
        def __getattr__(self, name):
            return getattr(inner, name)  # noqa: F821 - the enclosing function's variable

        def __call__(self, batch_pixels):
            t = time.perf_counter()
            try:
                return inner(batch_pixels)  # noqa: F821
            finally:
                inside[0] += time.perf_counter() - t

    timed = Timed()
    timed.config = config  # extract() checks the embedder's config
    res = extract(
        args.data,
        work / f"cache-{precision}.h5",
        config,
        batch_size=batch,
        workers=args.workers,
        embedder=timed,
        overwrite=True,
    )
    row.update(
        pipeline_pps=res.pictures_per_second,
        pipeline_extracted=res.extracted,
        pipeline_skipped=res.skipped,
        pipeline_loop_s=res.loop_seconds,
        pipeline_model_share=inside[0] / res.loop_seconds if res.loop_seconds else None,
    )
    row["pipeline_over_model"] = row["pipeline_pps"] / row["model_alone_pps"]
    row["verdict"] = verdict(row, args.decode_pps)
    (work / f"cache-{precision}.h5").unlink(missing_ok=True)
    del embedder, inner
    return row


def verdict(row: dict, decode_pps: float) -> str:
    """Where the pipeline's time goes, in words, from the figures of one row."""
    ratio = row["pipeline_over_model"]
    if ratio >= 0.9:
        return "pipeline keeps up with the model"
    if decode_pps < 1.3 * row["pipeline_pps"]:
        return "decode-bound: the decoding threads are the limit"
    if row["alone_preprocess_share"] + row["alone_copy_share"] > 0.5:
        return "host-bound: batch copy + preprocess_input on the main thread"
    if (row["model_on_device_pps"] or 0) > 2 * row["model_alone_pps"]:
        return "transfer-bound: host-to-device copies and the Python loop"
    return "main thread waits for decoded pictures while the model runs (no overlap)"


def measure(args) -> dict:
    import keras

    from headstart.extractor.options import make_config
    from headstart.extractor.scan import scan_dataset

    t_start = time.perf_counter()
    info = _device()
    ds = scan_dataset(args.data)
    paths = [args.data / rel for rel, _ in ds.items]
    config = make_config(
        args.backbone, weights="none", alpha=args.alpha, precision="float32", input_size=args.input_size
    )
    pixels, decode_s = _decode_all(paths, config, args.workers)
    args.decode_pps = len(pixels) / decode_s
    result = {
        "device": info,
        "pictures": len(paths),
        "backbone": args.backbone,
        "input_size": config.input_size,
        "workers": args.workers,
        "decode_pps": args.decode_pps,
        "rows": [],
    }
    for precision in args.precisions.split(","):
        try:
            row = measure_precision(args, paths, pixels, precision, args.work)
        except Exception as err:  # one failing precision still leaves the others' figures
            row = {"precision": precision, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        row["backend"] = keras.backend.backend()
        result["rows"].append(row)
        print(json.dumps(row, default=str), flush=True)
        result["seconds"] = time.perf_counter() - t_start
        # Written after every precision: a run cut at its time limit keeps the rows it finished.
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


# -- table -------------------------------------------------------------------------------------


def fmt(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(results: list[dict]) -> str:
    headers = [
        "backend",
        "precision",
        "batch",
        "setup s",
        "on-device p/s",
        "model alone p/s",
        "pipeline p/s",
        "pipe/model",
        "in model %",
        "decode p/s",
        "where the time goes",
    ]
    rows = []
    for res in results:
        for r in res.get("rows", []):
            if "error" in r:
                rows.append(
                    [
                        r.get("backend"),
                        r["precision"],
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        "FAILED: " + r["error"][:80],
                    ]
                )
                continue
            rows.append(
                [
                    r["backend"],
                    r["precision"],
                    r["batch"],
                    fmt(r["setup_s"], 1),
                    fmt(r["model_on_device_pps"]),
                    fmt(r["model_alone_pps"]),
                    fmt(r["pipeline_pps"]),
                    fmt(r["pipeline_over_model"], 2),
                    fmt(100 * (r["pipeline_model_share"] or 0)),
                    fmt(res["decode_pps"]),
                    r["verdict"],
                ]
            )
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(
        c.ljust(w) if i in (0, 1, 10) else c.rjust(w)  # noqa: E731
        for i, (c, w) in enumerate(zip(r, widths))
    )
    out = [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    first = next((r for r in results if r.get("device")), None)
    if first:
        d = first["device"]
        out.insert(
            0,
            f"{first['pictures']} pictures, {first['backbone']} {first['input_size']} px, random weights, "
            f"{first['workers']} decode workers; GPU: {d.get('gpu') or 'none'}; "
            f"{d.get('cpu_cores')} CPU cores; Keras {d.get('keras')}",
        )
    out.append(
        "on-device: predict_on_batch on a batch already on the GPU; model alone: Embedder on pre-decoded "
        "uint8 (copy + preprocess + transfer + model); in model %: share of the pipeline's loop inside "
        "model calls; decode: decode_stream alone with the workers above."
    )
    for res in results:
        for r in res.get("rows", []):
            if "error" not in r:
                out.append(
                    f"  {r['backend']} {r['precision']}: model alone = {100 * r['alone_copy_share']:.0f} % "
                    f"batch copy, {100 * r['alone_preprocess_share']:.0f} % preprocess_input, "
                    f"{100 * r['alone_predict_share']:.0f} % predict (transfer + model + features back)"
                )
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--n", type=int, default=8000)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    m = sub.add_parser("measure")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--json", type=Path, required=True)
    m.add_argument("--work", type=Path, default=None)
    m.add_argument("--backbone", default="vgg16", choices=("vgg16", "mobilenet", "tiny"))
    m.add_argument("--alpha", type=float, default=None)
    m.add_argument("--input-size", type=int, default=None)
    m.add_argument("--precisions", default="float16,float32")
    m.add_argument("--batch-size", default="auto")
    m.add_argument("--workers", type=int, default=16)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+", type=Path)
    t.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        print(json.dumps(generate(args.out, args.n, args.jobs)), flush=True)
    elif args.cmd == "measure":
        if args.backbone == "mobilenet" and args.alpha is None:
            args.alpha = 0.25
        args.work = args.work or args.json.parent
        measure(args)
    else:
        results = [json.loads(f.read_text()) for f in args.files if f.is_file()]
        print(render(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
