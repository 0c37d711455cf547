"""What `extract --views flip` changes: each head's test accuracy and log loss, without and with views.

The same pictures are extracted twice (``--views none`` and ``--views flip``); every head is fitted
on each cache for several split seeds, and the test split (the same pictures in both caches for a
given seed) is scored per picture (with views: the picture's two rows averaged). Prints, per head,
the mean and standard deviation over seeds of each figure and of the paired difference
flip - none. Nothing is asserted.

    .venv/bin/python bench/bench_views.py                      # pets-sample, MobileNet 0.25 ImageNet (~2-4 min)
    .venv/bin/python bench/bench_views.py --seeds 0,1,2 --json views.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_MOBILENET_WEIGHTS,
    cpu_cores,
    describe_load,
    finish,
    table,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--weights",
        default=str(DEFAULT_MOBILENET_WEIGHTS),
        help="MobileNet 0.25 weights file (default: the shared ImageNet one)",
    )
    parser.add_argument("--seeds", default="0,1,2,3,4", help="split seeds (comma-separated)")
    parser.add_argument("--heads", default="softmax,logreg,mlp")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"Expected the picture folder {args.data}. Received: no such folder; pass --data DIR.")
    import numpy as np

    from headstart.extractor.options import make_config
    from headstart.extractor.runner import extract
    from headstart.heads.split import SplitSpec
    from headstart.heads.training import compare

    logging.getLogger("headstart").setLevel(logging.ERROR)
    t_start = time.perf_counter()
    cores = cpu_cores()
    print(describe_load(cores))
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = args.heads.split(",")
    weights = args.weights if Path(args.weights).is_file() else "none"
    results: dict = {"data": str(args.data), "weights": weights, "seeds": seeds, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        tmp = Path(tmp)
        for views in ("none", "flip"):
            config = make_config("mobilenet", alpha=0.25, weights=weights, precision="float32", views=views)
            res = extract(args.data, tmp / f"{views}.h5", config)
            print(f"extract --views {views}: {res.extracted} pictures, {res.total_rows} rows in {res.seconds:.1f} s")
            results[f"extract_{views}_s"] = res.seconds
            for seed in seeds:
                cmp = compare(
                    tmp / f"{views}.h5",
                    tmp / f"runs-{views}-{seed}",
                    heads=heads,
                    split=SplitSpec(seed=seed),
                    params={"random_state": seed},
                    plots=False,
                )
                for run in cmp.runs:
                    results["runs"].append(
                        {
                            "views": views,
                            "seed": seed,
                            "head": run.head,
                            "test_accuracy": run.test_accuracy,
                            "test_log_loss": run.test_log_loss,
                            "n_test": run.metrics["test"]["n"],
                        }
                    )
    rows = []
    summary = {}
    for head in heads:
        for metric in ("test_accuracy", "test_log_loss"):
            got = {
                v: np.array([r[metric] for r in results["runs"] if r["head"] == head and r["views"] == v])
                for v in ("none", "flip")
            }
            diff = got["flip"] - got["none"]
            summary[f"{head}.{metric}"] = {"none": got["none"].tolist(), "flip": got["flip"].tolist()}
            rows.append(
                [
                    head,
                    metric.replace("test_", "test "),
                    f"{got['none'].mean():.3f} ± {got['none'].std(ddof=1):.3f}",
                    f"{got['flip'].mean():.3f} ± {got['flip'].std(ddof=1):.3f}",
                    f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f}",
                    f"{int((diff > 0).sum())}/{len(diff)}",
                ]
            )
    n_test = sorted({r["n_test"] for r in results["runs"]})
    print(
        f"\n{len(seeds)} split seeds ({args.seeds}); test pictures per seed: {', '.join(map(str, n_test))}; "
        "mean ± standard deviation over seeds; diff = flip - none, paired by seed; 'up' = seeds where flip is higher"
    )
    print(table(["head", "figure", "views none", "views flip", "diff", "up"], rows))
    results["summary"] = summary
    finish(results, t_start, cores, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
