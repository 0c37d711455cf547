"""Decoding before and after issue 17 on real photos, for small backbones: decoding alone, the model
alone, and the extraction pipeline, each variant measured in the same run, alternating.

    .venv/bin/python bench/bench_decode_pipeline.py            # pets-sample; mobilenet 0.25, efficientnetv2_b0
    .venv/bin/python bench/bench_decode_pipeline.py --rounds 5 --only mobilenet

Variants (the same pixels in each: `tests/test_decode.py` and `tests/test_fastjpeg.py` check it):
  before      headstart's decode path before issue 17 (`tests/decode_reference.py`): Pillow decodes,
              `exif_transpose` copies the picture, numpy makes a float32 copy and one per channel;
  pillow      now, ``--decoder pillow`` (the default): Pillow splits and converts the channels,
              upright pictures are not copied;
  simplejpeg  now, ``--decoder simplejpeg`` (``pip install -e '.[fastjpeg]'``): libjpeg-turbo through
              simplejpeg, no Pillow decode.
First, on one thread (no model): where one picture's time goes, old and new steps; then `load_image`'s
CPU ms per picture for the photos as they are and upscaled to 1280 x 960 and 4000 x 3000.
Ratio: pipeline / model alone (pictures/s), the model alone measured on ``--model-batches`` batches just
before each pipeline run (so the two see the same load): the median over the rounds. Pictures/s: the
best of ``--rounds``. "decode CPU ms": CPU time per picture of decoding alone (all threads; the least of
the rounds; less sensitive to other work than pictures/s). The variants' order turns each round, and
the load average is printed each round (figures taken on a busy machine are noise).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # decode_reference: the old path

from _common import (  # noqa: E402
    DEFAULT_DATA,
    cpu_cores,
    describe_device,
    describe_load,
    device_info,
    finish,
    load_average,
    table,
)

BACKBONES = {"mobilenet": {"alpha": 0.25}, "efficientnetv2_b0": {}}


def before_hashed(path, size, resize="squash", draft=False, resampler="float32", decoder="pillow"):
    """`load_image_hashed` as it was before issue 17 (float32 resampler, no draft)."""
    from decode_reference import reference_load_image

    from headstart.extractor.decode import DecodeError, read_picture

    data = read_picture(path)
    try:
        return reference_load_image(data, size, resize), hashlib.sha256(data).hexdigest()
    except Exception as err:  # the pictures benchmarked are readable; keep decode_stream's contract anyway
        raise DecodeError(str(err)) from None


@contextlib.contextmanager
def variant(name: str):
    """Run decode_stream (and so extract) with the decode path of ``name``."""
    from headstart.extractor import embed

    current = embed.load_image_hashed
    if name == "before":
        embed.load_image_hashed = before_hashed
    try:
        yield
    finally:
        embed.load_image_hashed = current


def steps(paths: list[Path], size: tuple[int, int], have_simplejpeg: bool) -> list[list]:
    """Milliseconds per picture of each step, old and new, on one thread."""
    import numpy as np
    from decode_reference import reference_resize_float32
    from PIL import Image, ImageOps

    from headstart.extractor import fastjpeg
    from headstart.extractor.decode import resize_float32

    t = dict.fromkeys(
        [
            "read + SHA-256",
            "Image.open (header)",
            "decode: Pillow",
            "decode: simplejpeg",
            "EXIF: exif_transpose (copy)",
            "EXIF: exif_transpose (in place)",
            "resize: numpy float32 copies (before)",
            "resize: Pillow split + convert F (now)",
        ],
        0.0,
    )
    for path in paths:
        t0 = time.perf_counter()
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        t1 = time.perf_counter()
        img = Image.open(io.BytesIO(data))
        t2 = time.perf_counter()
        img.load()
        t3 = time.perf_counter()
        if have_simplejpeg:
            fastjpeg.decode(Image.open(io.BytesIO(data)), data)
        t4 = time.perf_counter()
        ImageOps.exif_transpose(img)
        t5 = time.perf_counter()
        ImageOps.exif_transpose(img, in_place=True)
        t6 = time.perf_counter()
        reference_resize_float32(np.asarray(img, dtype=np.uint8), size)
        t7 = time.perf_counter()
        resize_float32(img, size)
        t8 = time.perf_counter()
        for key, (a, b) in zip(t, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7), (t7, t8)]):
            t[key] += b - a
    return [[k, 1000 * v / len(paths)] for k, v in t.items() if have_simplejpeg or "simplejpeg" not in k]


def by_size(paths: list[Path], variants: list[str], rounds: int) -> list[list]:
    """CPU ms per picture of `load_image` (224 px, float32 resampler) on one thread, per variant, for
    the photos as they are and upscaled (bicubic, light noise, JPEG quality 90) to 1280 x 960 and
    4000 x 3000 (a phone camera's 12 MP): the least of ``rounds``, interleaved."""
    import numpy as np
    from decode_reference import reference_load_image
    from PIL import Image

    from headstart.extractor.decode import load_image

    rng = np.random.default_rng(0)
    rows = []
    for label, wh, count in (
        ("as they are", None, len(paths)),
        ("1280 x 960", (1280, 960), 24),
        ("4000 x 3000", (4000, 3000), 6),
    ):
        datas = []
        for p in paths[:count]:
            if wh is None:
                datas.append(p.read_bytes())
                continue
            a = np.asarray(Image.open(p).convert("RGB").resize(wh, Image.BICUBIC), dtype=np.float32)
            buf = io.BytesIO()
            Image.fromarray(np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)).save(
                buf, "JPEG", quality=90
            )
            datas.append(buf.getvalue())
        fns = {
            "before": lambda d: reference_load_image(d, (224, 224)),
            "pillow": lambda d: load_image(io.BytesIO(d), (224, 224), "squash", False, "float32", "pillow"),
            "simplejpeg": lambda d: load_image(io.BytesIO(d), (224, 224), "squash", False, "float32", "simplejpeg"),
        }
        least = dict.fromkeys(variants, float("inf"))
        for _ in range(rounds):
            for v in variants:
                c0 = time.process_time()
                for d in datas:
                    fns[v](d)
                least[v] = min(least[v], 1000 * (time.process_time() - c0) / len(datas))
        rows.append(
            [f"{label} ({len(datas)})"] + [least[v] for v in variants] + [least["before"] / least[variants[-1]]]
        )
    return rows


def measure(name: str, args, paths: list[Path], variants: list[str], workers: int) -> tuple[dict[str, float], object]:
    """Best pictures/s of the model alone, and of decoding alone and the pipeline per variant."""
    from headstart.extractor.embed import Embedder, decode_stream
    from headstart.extractor.options import make_config
    from headstart.extractor.runner import extract

    config = make_config(name, weights="none", precision="float32", **BACKBONES.get(name, {}))
    configs = {
        v: dataclasses.replace(config, decoder="simplejpeg" if v == "simplejpeg" else "pillow") for v in variants
    }
    emb = Embedder(config, args.batch_size)
    embedders = {v: emb if configs[v] == config else copy.copy(emb) for v in variants}
    for v, e in embedders.items():
        e.config = configs[v]
    size = (config.input_size, config.input_size)
    with variant("before"):
        pixels = [px for _, px, _, _ in decode_stream(paths, config, workers, 64)]
    batches = [pixels[i : i + args.batch_size] for i in range(0, len(pixels), args.batch_size)]
    emb(batches[0])  # trace once
    best: dict[str, float] = {}
    ratios: dict[str, list[float]] = {v: [] for v in variants}

    def keep(key: str, rate: float) -> None:
        best[key] = max(best.get(key, rate), rate)

    def model_alone() -> float:
        t0 = time.perf_counter()
        for b in batches[: args.model_batches]:
            emb(b)
        rate = sum(len(b) for b in batches[: args.model_batches]) / (time.perf_counter() - t0)
        keep("model", rate)
        return rate

    cores = cpu_cores()
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        for r in range(args.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            print(f"{name} round {r + 1}/{args.rounds}: {describe_load(cores)}", flush=True)
            for v in order:
                with variant(v):
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _i, px, reason, _sha in decode_stream(paths, configs[v], workers, 64):
                        assert px is not None and px.shape == (*size, 3), reason
                    keep(f"decode {v}", len(paths) / (time.perf_counter() - t0))
                    keep(f"decode cpu {v}", -1000 * (time.process_time() - c0) / len(paths))  # the least
                    model = model_alone()  # just before the pipeline: the two see the same load
                    out = Path(tmp) / f"{name}-{v}-{r}.h5"
                    res = extract(
                        args.data, out, configs[v], batch_size=args.batch_size, workers=workers, embedder=embedders[v]
                    )
                    assert res.extracted == len(paths), res
                    keep(f"pipeline {v}", res.pictures_per_second)
                    ratios[v].append(res.pictures_per_second / model)
                    out.unlink()
    for v in variants:
        best[f"ratio {v}"] = statistics.median(ratios[v])
    return best, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"pictures (default {DEFAULT_DATA})")
    parser.add_argument("--only", default=",".join(BACKBONES), help="comma-separated backbones")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the best (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="pictures per model call (extract's CPU default)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per core)")
    parser.add_argument(
        "--model-batches", type=int, default=5, help="batches of the model-alone pass before each pipeline (default 5)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from headstart.extractor import fastjpeg
    from headstart.extractor.embed import default_workers
    from headstart.extractor.scan import scan_dataset

    t_start = time.perf_counter()
    info = device_info()
    cores = cpu_cores()
    workers = args.workers or default_workers()
    have_simplejpeg = fastjpeg.available()
    variants = ["before", "pillow"] + (["simplejpeg"] if have_simplejpeg else [])
    dataset = scan_dataset(args.data)
    paths = [args.data / rel for rel, _ in dataset.items]
    print(f"bench_decode_pipeline: {len(paths)} pictures of {args.data}, batch {args.batch_size}, {workers} decoders")
    print(f"device: {describe_device(info)}")
    print(f"simplejpeg: {fastjpeg.version() or 'not installed (pip install -e .[fastjpeg]): variant left out'}")
    print(describe_load(cores), flush=True)
    result = {"bench": "decode_pipeline", "data": str(args.data), "n": len(paths), "device": info, "rows": []}
    result["load_average_start"] = load_average()

    print("\n== where one picture's time goes (one thread, ms/picture) ==")
    step_rows = steps(paths, (224, 224), have_simplejpeg)
    print(table(["step", "ms/picture"], step_rows, 3), flush=True)
    result["steps_ms"] = dict(step_rows)
    print("\n== load_image on one thread by picture size: CPU ms per picture, the least of the rounds ==")
    size_rows = by_size(paths, variants, args.rounds)
    print(table(["pictures", *variants, f"before / {variants[-1]}"], size_rows, 2), flush=True)
    result["by_size_cpu_ms"] = {r[0]: dict(zip(variants, r[1:])) for r in size_rows}

    for name in args.only.split(","):
        best, config = measure(name, args, paths, variants, workers)
        for v in variants:
            row = {
                "backbone": name + (f" {config.alpha}" if config.alpha else ""),
                "variant": v,
                "decode_pictures_per_second": best[f"decode {v}"],
                "decode_cpu_ms_per_picture": -best[f"decode cpu {v}"],
                "model_pictures_per_second": best["model"],
                "pipeline_pictures_per_second": best[f"pipeline {v}"],
                "ratio": best[f"ratio {v}"],
                "ratio_of_best": best[f"pipeline {v}"] / best["model"],
            }
            result["rows"].append(row)
            print(f"  {v}: {row['pipeline_pictures_per_second']:.1f} pictures/s, ratio {row['ratio']:.2f}", flush=True)

    print(
        f"\n== {len(paths)} photos of {args.data.name} on {cores} cores: pictures/s, best of {args.rounds} rounds; "
        "ratio pipeline / model alone, median of the rounds =="
    )
    print(
        table(
            [
                "backbone",
                "decode path",
                "decode CPU ms",
                f"decode alone ({workers} thr.)",
                "model alone",
                "pipeline",
                "ratio",
            ],
            [
                [
                    r["backbone"],
                    r["variant"],
                    r["decode_cpu_ms_per_picture"],
                    r["decode_pictures_per_second"],
                    r["model_pictures_per_second"],
                    r["pipeline_pictures_per_second"],
                    r["ratio"],
                ]
                for r in result["rows"]
            ],
            digits=2,
        )
    )
    finish(result, t_start, cores, args.json)


if __name__ == "__main__":
    main()
