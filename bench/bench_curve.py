"""headstart curve on a full-size cache: a logreg learning curve on 25,000 x 4,096 synthetic features.

    .venv/bin/python bench/bench_curve.py                    # 25,000 x 4,096, 2 classes, 5 draws
    .venv/bin/python bench/bench_curve.py --rows 5000 --dim 512

Synthetic features shaped like VGG16 fc2's (non-negative, two overlapping classes) in a real
cache; the time is the whole `learning_curve` call (the cache read once, every point fitted, the
plot drawn), and each point's fit time is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, finish, table  # noqa: E402
from bench_similar import write_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--head", default="logreg")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="points fitted at once (worker processes)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from headstart.heads.curve import learning_curve

    cores = cpu_cores()
    t_start = time.perf_counter()
    print(describe_load(cores))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "c.h5"
        write_features(cache, args.rows, args.dim)
        t0 = time.perf_counter()
        result = learning_curve([cache], args.head, Path(tmp) / "curve", draws=args.draws, jobs=args.jobs)
        seconds = time.perf_counter() - t0
    print(
        table(
            ["per class", "train pictures", "draws", "accuracy", "sd", "log loss"],
            [
                [r["per_class"], r["n_train"], r["draws"], r["accuracy_mean"], r["accuracy_std"], r["log_loss_mean"]]
                for r in result.rows
            ],
            digits=3,
        )
    )
    print(f"{args.head} curve on {args.rows:,} x {args.dim}: {seconds:.1f} s ({len(result.rows)} sizes)")
    finish({"rows": args.rows, "dim": args.dim, "seconds": seconds, "summary": result.rows}, t_start, cores, args.json)


if __name__ == "__main__":
    main()
