"""Exported model vs `headstart predict` on the same pictures, per picture kind: top-1 agreement,
max and mean probability difference, and held-out accuracy of each (the README's export figures).

The kinds are the pets photos themselves and pictures made from them: smaller than the input
(upscaled), larger (downscaled, JPEG draft-decodable), non-square, EXIF-rotated, grayscale, RGBA,
16-bit (``tests/conftest.py: make_picture_kinds``).

    headstart extract ../shared/data/pets-sample --out /tmp/pets-mb.h5 --backbone mobilenet --alpha 0.25 \\
        --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5
    headstart compare /tmp/pets-mb.h5 --out /tmp/runs
    headstart export /tmp/runs/logreg --out /tmp/pets.keras
    .venv/bin/python bench/bench_export_agreement.py /tmp/runs/logreg /tmp/pets.keras ../shared/data/pets-sample
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("exported", type=Path)
    parser.add_argument("pictures", type=Path)
    parser.add_argument("--per-kind", type=int, default=8, help="Generated pictures of each kind.")
    args = parser.parse_args()
    from conftest import make_picture_kinds
    from PIL import Image

    from headstart.cache import open_cache
    from headstart.heads.evaluation import _test_rows, load_run
    from headstart.ship.predict import predict

    pictures = sorted(p for p in args.pictures.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    info, _ = load_run(args.run)
    size = int(info["cache"]["fingerprint"]["input_size"])
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in pictures[:: max(1, len(pictures) // 16)]]
    tmp = Path(tempfile.mkdtemp(prefix="bench-kinds-"))
    kinds = {"pets-sample": pictures, **make_picture_kinds(tmp, size, sources=sources, per_kind=args.per_kind)}
    files = [p for paths in kinds.values() for p in paths]
    t0 = time.perf_counter()
    by_run = {p.path.resolve(): dict(p.top) for p in predict(args.run, files, top_k=1000).predictions if p.ok}
    t1 = time.perf_counter()
    by_file = {p.path.resolve(): dict(p.top) for p in predict(args.exported, files, top_k=1000).predictions if p.ok}
    t2 = time.perf_counter()
    top = lambda d: max(d, key=d.get)  # noqa: E731
    per_kind = {}
    print(f"{'kind':14s} {'pictures':>8s} {'top-1 same':>10s} {'max |dp|':>10s} {'mean |dp|':>10s}")
    for kind, paths in kinds.items():
        keys = [p.resolve() for p in paths if p.resolve() in by_run and p.resolve() in by_file]
        diffs = [abs(by_run[k][c] - by_file[k][c]) for k in keys for c in by_run[k]]
        row = {
            "pictures": len(keys),
            "top1_agreement": float(np.mean([top(by_run[k]) == top(by_file[k]) for k in keys])),
            "max_abs_probability_difference": float(np.max(diffs)),
            "mean_abs_probability_difference": float(np.mean(diffs)),
        }
        per_kind[kind] = row
        print(
            f"{kind:14s} {row['pictures']:8d} {row['top1_agreement']:10.4f} "
            f"{row['max_abs_probability_difference']:10.2e} {row['mean_abs_probability_difference']:10.2e}"
        )
    with open_cache(info["cache"]["path"]) as cache:
        test = [
            ((Path(cache.root) / cache.paths[i]).resolve(), cache.class_names[cache.labels[i]])
            for i in _test_rows(info, cache)
        ]
    test = [(p, y) for p, y in test if p in by_file]
    result = {
        "resampler": info["cache"]["fingerprint"].get("resampler", "pillow-uint8"),
        "jpeg_draft": info["cache"]["fingerprint"]["jpeg_draft"],
        "per_kind": per_kind,
        "held_out": len(test),
        "held_out_accuracy_predict": float(np.mean([top(by_run[p]) == y for p, y in test])),
        "held_out_accuracy_exported": float(np.mean([top(by_file[p]) == y for p, y in test])),
        "seconds_predict": t1 - t0,
        "seconds_exported": t2 - t1,
    }
    for k, v in result.items():
        if k != "per_kind":
            print(f"{k:34s} {v:.4f}" if isinstance(v, float) else f"{k:34s} {v}")
    print("JSON " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
