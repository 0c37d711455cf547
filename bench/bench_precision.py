"""Precision benchmark: the same pictures through the same backbone in float32, bfloat16 (and float16
on a GPU): model-alone pictures/s, how close the features stay to float32 (cosine similarity), and,
with real MobileNet weights, the held-out accuracy of a logistic regression on each precision's features.

    .venv/bin/python bench/bench_precision.py --backbone mobilenet
    .venv/bin/python bench/bench_precision.py --backbone vgg16
    .venv/bin/python bench/bench_precision.py --precision float32,bfloat16,float16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Stopwatch,
    add_common_options,
    describe_device,
    describe_load,
    device_info,
    finish,
    fmt,
    load_average,
    make_dataset,
    model_config,
    resolve_common,
    source_pictures,
    table,
)

DEFAULT_N = {"mobilenet": 300, "vgg16": 64}  # vgg16: two whole batches of 32


def cosine_rows(a, b):
    import numpy as np

    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, default_n=DEFAULT_N)
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed passes per precision; best is kept (default: mobilenet 3, vgg16 1)",
    )
    parser._option_string_actions["--precision"].help = (
        "comma-separated precisions to compare with float32 (default auto: float32,bfloat16, and float16 "
        "where Keras sees a GPU)"
    )
    args = resolve_common(parser, parser.parse_args(argv))
    args.repeat = args.repeat or {"mobilenet": 3, "vgg16": 1}[args.backbone]

    import numpy as np

    from headstart.extractor.embed import Embedder, decode_stream, default_workers

    t_start = time.perf_counter()
    info = device_info()
    if args.precision == "auto":
        precisions = ["float32", "bfloat16"] + (["float16"] if info.get("gpus") else [])
    else:
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        if "float32" not in precisions:
            precisions.insert(0, "float32")
    precisions.sort(key=lambda p: p != "float32")  # float32 first: the reference
    base_config = model_config(args, precision="float32")
    print(
        f"bench_precision: {args.backbone} ({base_config.layer}, weights {args.weights}, alpha {args.alpha}), "
        f"batch {args.batch_size}, precisions {', '.join(precisions)}"
    )
    print(f"device: {describe_device(info)}")
    print(describe_load(info["cpu_cores"]), flush=True)
    result = {
        "bench": "precision",
        "backbone": args.backbone,
        "layer": base_config.layer,
        "weights": args.weights,
        "alpha": args.alpha,
        "batch_size": args.batch_size,
        "device": info,
        "precisions": {},
    }
    result["load_average_start"] = load_average()
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        pictures, where = source_pictures(args, Path(tmp))
        n = min(args.n, len(pictures))  # distinct pictures only: a repeated one would leak into the test split
        if n < args.n:
            print(f"note: --n {args.n} asked, {n} distinct pictures used (repeats would leak across the split)")
        data = make_dataset(pictures, n, Path(tmp) / "data")
        paths = sorted(p for p in data.rglob("*") if p.is_symlink() or p.is_file())
        class_names = sorted({p.parent.name for p in paths})
        labels = np.array([class_names.index(p.parent.name) for p in paths])
        workers = args.workers or default_workers()
        pixels = [px for _, px, _, _ in decode_stream(paths, base_config, workers, 4 * workers)]
        assert all(px is not None for px in pixels), "a picture could not be decoded"
        batches = [pixels[i : i + args.batch_size] for i in range(0, len(pixels), args.batch_size)]
        counts = ", ".join(f"{c} {int((labels == i).sum())}" for i, c in enumerate(class_names))
        print(f"pictures: {where}; N = {n} ({counts})")
        result.update(pictures=where, n=n)

        feats: dict[str, np.ndarray] = {}
        for precision in precisions:
            config = model_config(args, precision=precision)
            with Stopwatch() as build:
                embedder = Embedder(config, args.batch_size)
            with Stopwatch() as warm:
                embedder(batches[0])
            runs = []
            for _ in range(args.repeat):
                with Stopwatch() as sw:
                    out = [embedder(b) for b in batches]
                runs.append(sw.seconds)
            feats[precision] = np.concatenate(out).astype(np.float32)
            result["precisions"][precision] = {
                "pps": n / min(runs),
                "runs_s": runs,
                "build_s": build.seconds,
                "warm_s": warm.seconds,
            }
            print(
                f"  {precision:9s} {n / min(runs):8.1f} pictures/s (build {build.seconds:.1f} s, "
                f"first batch {warm.seconds:.1f} s)",
                flush=True,
            )
            del embedder

        ref = feats["float32"]
        for precision in precisions:
            cos = cosine_rows(feats[precision], ref)
            # Centred on the float32 mean: features of one backbone share a large common direction
            # (ReLU outputs are positive), which keeps the plain cosine near 1 whatever happens.
            centre = ref.mean(axis=0)
            cos_c = cosine_rows(feats[precision] - centre, ref - centre)
            r = result["precisions"][precision]
            r.update(
                cos_mean=float(cos.mean()),
                cos_min=float(cos.min()),
                cos_centred_mean=float(cos_c.mean()),
                cos_centred_min=float(cos_c.min()),
                finite=bool(np.isfinite(feats[precision]).all()),
                speedup=r["pps"] / result["precisions"]["float32"]["pps"],
            )

        real = args.backbone == "mobilenet" and args.weights != "none" and not args.synthetic
        if real:
            from sklearn.linear_model import LogisticRegression
            from sklearn.model_selection import train_test_split
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            train, test = train_test_split(np.arange(n), test_size=0.25, stratify=labels, random_state=0)
            heads = {}
            for precision in precisions:
                x = feats[precision]
                head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
                heads[precision] = head.fit(x[train], labels[train])
                r = result["precisions"][precision]
                r["accuracy"] = float(head.score(x[test], labels[test]))
                r["accuracy_float32_head"] = float(heads["float32"].score(x[test], labels[test]))
            result["split"] = {"train": len(train), "test": len(test), "random_state": 0}

    rows = []
    for precision in precisions:
        r = result["precisions"][precision]
        rows.append(
            [
                precision,
                f"{r['pps']:.1f}",
                f"{r['speedup']:.2f}",
                f"{r['cos_mean']:.5f}",
                f"{r['cos_min']:.5f}",
                f"{r['cos_centred_mean']:.5f}",
                f"{r['cos_centred_min']:.5f}",
                fmt(r.get("accuracy"), 3),
                fmt(r.get("accuracy_float32_head"), 3),
            ]
        )
    print(f"\n== model alone (preprocess + predict on pre-decoded pictures), {n} pictures, best of {args.repeat} ==")
    print(
        table(
            [
                "precision",
                "pictures/s",
                "speed-up vs float32",
                "cosine mean",
                "cosine min",
                "centred cos. mean",
                "centred cos. min",
                "test accuracy",
                "acc. float32 head",
            ],
            rows,
        )
    )
    print(
        "cosine: each picture's features vs its float32 features; centred: both minus the float32 mean "
        "feature first,\nwhich removes the direction all pictures share and shows the precision error more plainly."
    )
    if real:
        s = result["split"]
        print(
            f"accuracy: logistic regression (standardised features, seed 0) trained on {s['train']}, tested on the "
            f"held-out {s['test']} pictures of the same precision; 'float32 head' = the head trained on float32 "
            "features, tested on this precision's features.\n"
            f"(one picture of the test split = {1 / s['test']:.3f} of accuracy)"
        )
    else:
        print(
            "accuracy: not measured (needs real MobileNet weights and real pictures; random weights or "
            "synthetic pictures give chance level)."
        )
    finish(result, t_start, info["cpu_cores"], args.json)


if __name__ == "__main__":
    main()
