"""Decoding benchmark: `load_image` pictures/s per core with and without JPEG draft mode, where its
time goes, and how `decode_stream` scales with worker threads. No model, no TensorFlow.

    .venv/bin/python bench/bench_decode.py
    .venv/bin/python bench/bench_decode.py --synthetic --synthetic-size 1024x768   # draft mode's case
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Stopwatch,
    add_common_options,
    cpu_cores,
    describe_device,
    describe_load,
    device_info,
    finish,
    load_average,
    make_dataset,
    resolve_common,
    source_pictures,
    table,
)

DEFAULT_N = {"mobilenet": 300, "vgg16": 300}


def worker_counts(cores: int) -> list[int]:
    """1, 2, then powers of two up to the core count, and the core count itself."""
    counts = {1, 2, cores}
    k = 4
    while k <= cores:
        counts.add(k)
        k *= 2
    return sorted(counts)


def stage_times(paths: list[Path], size: tuple[int, int], resize: str, draft: bool) -> dict[str, float]:
    """Seconds per step of `load_image`, replayed step by step (keep in step with decode.py)."""
    import numpy as np
    from PIL import Image, ImageOps

    height, width = size
    steps = dict.fromkeys(
        (
            "open + header",
            "JPEG decode (load)",
            "exif_transpose",
            "convert to RGB",
            f"resize ({resize}, bilinear)",
            "to numpy",
        ),
        0.0,
    )
    names = list(steps)
    for path in paths:
        t = [time.perf_counter()]
        with Image.open(path) as img:
            t.append(time.perf_counter())
            if draft and img.format == "JPEG":
                img.draft("RGB", (width * 2, height * 2))
            img.load()
            t.append(time.perf_counter())
            img = ImageOps.exif_transpose(img)
            t.append(time.perf_counter())
            img = img if img.mode == "RGB" else img.convert("RGB")
            t.append(time.perf_counter())
            if resize == "crop":
                img = ImageOps.fit(img, (width, height), Image.BILINEAR)
            else:
                img = img.resize((width, height), Image.BILINEAR)
            t.append(time.perf_counter())
            np.asarray(img, dtype=np.uint8)
            t.append(time.perf_counter())
        for i, name in enumerate(names):
            steps[name] += t[i + 1] - t[i]
    return steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, default_n=DEFAULT_N)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per figure; the best is kept (default 3)")
    parser.add_argument("--resize", default="squash", choices=("squash", "crop"))
    args = resolve_common(parser, parser.parse_args(argv))

    from PIL import Image

    from headstart.extractor.decode import load_image
    from headstart.extractor.embed import decode_stream
    from headstart.settings.backbones import get_backbone
    from headstart.settings.config import ExtractionConfig

    t_start = time.perf_counter()
    info = device_info(with_tensorflow=False)
    cores = cpu_cores()
    side = get_backbone(args.backbone).input_size
    size = (side, side)
    print(
        f"bench_decode: {args.backbone} input {side}x{side}, resize {args.resize}, N = {args.n}, "
        f"batch {args.batch_size} (sets decode_stream's prefetch, as in extract)"
    )
    print(f"device: {describe_device(info)} (decoding runs on the CPU; --precision is not used here)")
    print(describe_load(info["cpu_cores"]), flush=True)
    result = {
        "bench": "decode",
        "backbone": args.backbone,
        "input_size": side,
        "resize": args.resize,
        "n": args.n,
        "device": info,
    }
    result["load_average_start"] = load_average()
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        pictures, where = source_pictures(args, Path(tmp))
        data = make_dataset(pictures, args.n, Path(tmp) / "data")
        paths = sorted(p for p in data.rglob("*") if p.is_file() or p.is_symlink())
        sizes = []
        for p in paths:
            with Image.open(p) as img:
                sizes.append(img.size)
        n_draft = 0
        for w, h in sizes:  # Pillow scales by 1/2, 1/4, 1/8 only if the result keeps both sides >= 2x target
            n_draft += min(w // (2 * side), h // (2 * side)) >= 2
        print(
            f"pictures: {where}; N = {len(paths)}; median {statistics.median(w for w, _ in sizes):.0f} x "
            f"{statistics.median(h for _, h in sizes):.0f} px, largest side {max(max(s) for s in sizes)} px; "
            f"draft mode shrinks {n_draft} of {len(paths)} (those with both sides >= {4 * side} px)"
        )
        result.update(
            pictures=where,
            draft_applies=n_draft,
            median_size=[statistics.median(w for w, _ in sizes), statistics.median(h for _, h in sizes)],
        )

        for p in paths:  # warm the page cache and Pillow's plugins
            load_image(p, size, args.resize, True)

        # 1. one thread, draft on / off
        single = {True: 0.0, False: 0.0}
        for _ in range(args.repeat):  # interleaved, so a busy moment on a shared machine hits both
            for draft in (True, False):
                with Stopwatch() as sw:
                    for p in paths:
                        load_image(p, size, args.resize, draft)
                single[draft] = max(single[draft], len(paths) / sw.seconds)
        print(f"\n== 1. load_image on one thread (pictures/s per core), best of {args.repeat} ==")
        print(
            table(
                ["", "pictures/s", "ms/picture", "ratio to draft off"],
                [
                    [
                        "draft=True (headstart's default)",
                        single[True],
                        1000 / single[True],
                        single[True] / single[False],
                    ],
                    ["draft=False (--no-draft, as Keras)", single[False], 1000 / single[False], 1.0],
                ],
                2,
            )
        )
        result["single_thread"] = {
            "draft_pps": single[True],
            "no_draft_pps": single[False],
            "draft_speedup": single[True] / single[False],
        }

        # 2. where one picture's time goes
        steps = stage_times(paths, size, args.resize, True)
        total = sum(steps.values())
        print("\nwhere load_image's time goes (its steps replayed one by one, draft on, one thread):")
        print(
            table(
                ["step", "ms/picture", "share %"],
                [[k, 1000 * v / len(paths), 100 * v / total] for k, v in steps.items()],
                3,
            )
        )
        result["steps_ms"] = {k: 1000 * v / len(paths) for k, v in steps.items()}

        # 3. decode_stream scaling
        config = ExtractionConfig(input_size=side, resize=args.resize, jpeg_draft=True)
        counts = worker_counts(cores)
        if args.workers and args.workers not in counts:
            counts = sorted(set(counts) | {args.workers})
        scaling = {}
        for _ in range(args.repeat):  # interleave the worker counts, keep each one's best
            for w in counts:
                prefetch = max(2 * args.batch_size, 4 * w)  # as embed_stream does
                with Stopwatch() as sw:
                    for _i, px, reason, _sha in decode_stream(paths, config, w, prefetch):
                        assert px is not None, reason
                scaling[w] = max(scaling.get(w, 0.0), len(paths) / sw.seconds)
        base = scaling[1]
        print(f"\n== 2. decode_stream with 1..{max(counts)} worker threads ({cores} cores), best of {args.repeat} ==")
        print(
            table(
                ["workers", "pictures/s", "speed-up vs 1", "per worker", "efficiency"],
                [[w, r, r / base, r / w, r / base / w] for w, r in scaling.items()],
                2,
            )
        )
        result["scaling_pps"] = {str(w): r for w, r in scaling.items()}
        result["scaling_speedup"] = {str(w): r / base for w, r in scaling.items()}
    finish(result, t_start, info["cpu_cores"], args.json)


if __name__ == "__main__":
    main()
