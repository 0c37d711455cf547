"""Exported model vs `headstart predict` on the same pictures: top-1 agreement, probability
difference, and held-out accuracy of each (the figures in the README's export section).

    headstart extract ../shared/data/pets-sample --out /tmp/pets-mb.h5 --backbone mobilenet --alpha 0.25 \\
        --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5
    headstart compare /tmp/pets-mb.h5 --out /tmp/runs
    headstart export /tmp/runs/logreg --out /tmp/pets.keras
    .venv/bin/python bench/bench_export_agreement.py /tmp/runs/logreg /tmp/pets.keras ../shared/data/pets-sample
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("exported", type=Path)
    parser.add_argument("pictures", type=Path)
    args = parser.parse_args()
    from headstart.cache import open_cache
    from headstart.heads.evaluation import _test_rows, load_run
    from headstart.ship.predict import predict

    pictures = sorted(p for p in args.pictures.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    t0 = time.perf_counter()
    by_run = {p.path.resolve(): dict(p.top) for p in predict(args.run, pictures, top_k=1000).predictions if p.ok}
    t1 = time.perf_counter()
    by_file = {p.path.resolve(): dict(p.top) for p in predict(args.exported, pictures, top_k=1000).predictions if p.ok}
    t2 = time.perf_counter()
    keys = sorted(set(by_run) & set(by_file))
    top = lambda d: max(d, key=d.get)  # noqa: E731
    diffs = [abs(by_run[k][c] - by_file[k][c]) for k in keys for c in by_run[k]]
    info, _ = load_run(args.run)
    with open_cache(info["cache"]["path"]) as cache:
        test = [
            ((Path(cache.root) / cache.paths[i]).resolve(), cache.class_names[cache.labels[i]])
            for i in _test_rows(info, cache)
        ]
    test = [(p, y) for p, y in test if p in by_file]
    result = {
        "pictures": len(keys),
        "top1_agreement": float(np.mean([top(by_run[k]) == top(by_file[k]) for k in keys])),
        "mean_abs_probability_difference": float(np.mean(diffs)),
        "max_abs_probability_difference": float(np.max(diffs)),
        "held_out": len(test),
        "held_out_accuracy_predict": float(np.mean([top(by_run[p]) == y for p, y in test])),
        "held_out_accuracy_exported": float(np.mean([top(by_file[p]) == y for p, y in test])),
        "seconds_predict": t1 - t0,
        "seconds_exported": t2 - t1,
    }
    for k, v in result.items():
        print(f"{k:34s} {v:.4f}" if isinstance(v, float) else f"{k:34s} {v}")
    print("JSON " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
