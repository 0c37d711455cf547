"""What storing a content hash costs extraction: decoding with and without SHA-256, and whole `extract` runs.

Schema 2 stores the SHA-256 of each picture file. The decode worker reads the file once into
memory, hashes those bytes and decodes them (`load_image_hashed`), instead of letting Pillow open
the path (`load_image`, what extraction did before). Measured in one run, interleaved, best of
``--repeat``:

a. one thread: pictures/s of `load_image` vs `load_image_hashed` on the same pictures;
b. `extract` into a fresh cache with one built `Embedder` (MobileNet 0.25 by default): as it is
   (hashing), and with the worker's decode function swapped for the old one (no hash), in this
   process, so the only difference is the hash.

    python bench/bench_hash.py                    # pets sample, MobileNet 0.25 (about a minute)
    python bench/bench_hash.py --synthetic --n 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_options,
    cpu_cores,
    dataset_paths,
    describe_load,
    finish,
    make_dataset,
    model_config,
    resolve_common,
    source_pictures,
    table,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(ap, default_n={"mobilenet": 300, "vgg16": 64})
    ap.add_argument("--repeat", type=int, default=3)
    args = resolve_common(ap, ap.parse_args())
    t_start = time.perf_counter()
    cores = cpu_cores()
    print(describe_load(cores))
    from headstart.extractor import decode, embed, runner

    with tempfile.TemporaryDirectory() as tmp:
        pictures, where = source_pictures(args, Path(tmp))
        folder = make_dataset(pictures, args.n, Path(tmp) / "data")
        paths = dataset_paths(folder)
        print(f"pictures: {where}; {len(paths)} used")
        size = (224, 224)
        best = {"load_image": 0.0, "load_image_hashed": 0.0}
        for _ in range(args.repeat):
            for name, fn in (("load_image", decode.load_image), ("load_image_hashed", decode.load_image_hashed)):
                t0 = time.perf_counter()
                for p in paths:
                    fn(p, size)
                best[name] = max(best[name], len(paths) / (time.perf_counter() - t0))
        config = model_config(args)
        embedder = embed.Embedder(config, args.batch_size)
        embedder([decode.load_image(paths[0], size)])  # trace once
        hashed = embed.load_image_hashed

        def no_hash(path, size, resize, draft):  # what the worker did before schema 2
            return decode.load_image(path, size, resize, draft), None

        rates = {"extract, no hash (before)": 0.0, "extract, SHA-256 (now)": 0.0}
        for k in range(args.repeat):
            for name, fn in (("extract, no hash (before)", no_hash), ("extract, SHA-256 (now)", hashed)):
                embed.load_image_hashed = fn
                try:
                    res = runner.extract(
                        folder,
                        Path(tmp) / f"c{k}-{len(name)}.h5",
                        config,
                        embedder=embedder,
                        workers=args.workers,
                        batch_size=args.batch_size,
                    )
                finally:
                    embed.load_image_hashed = hashed
                rates[name] = max(rates[name], res.pictures_per_second)
    print(f"\nbest of {args.repeat}, pictures/s:")
    print(
        table(
            ["what", "pictures/s", "ratio"],
            [
                ["load_image (1 thread)", best["load_image"], 1.0],
                [
                    "load_image_hashed (1 thread)",
                    best["load_image_hashed"],
                    best["load_image_hashed"] / best["load_image"],
                ],
                ["extract, no hash (before)", rates["extract, no hash (before)"], 1.0],
                [
                    "extract, SHA-256 (now)",
                    rates["extract, SHA-256 (now)"],
                    rates["extract, SHA-256 (now)"] / rates["extract, no hash (before)"],
                ],
            ],
            digits=2,
        )
    )
    finish({"decode": best, "extract": rates, "n": len(paths), "backbone": args.backbone}, t_start, cores, args.json)


if __name__ == "__main__":
    main()
