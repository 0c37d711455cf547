"""headstart similar: query time of exact search and of the usearch index, and the index's recall@10.

    .venv/bin/python bench/bench_similar.py                          # 25,000 x 4,096 and 1,000,000 x 256
    .venv/bin/python bench/bench_similar.py --sizes 25000x4096 --queries 50

Synthetic features (clusters, as a backbone's classes make them) are written into real caches, so
the search reads them as it reads any cache. For each size: the time to open the search (one pass
for the mean, and the normalised rows into memory), the time per query once open (exact), the
index build time, the time per query of the index, and its recall@10 against exact search.
1,000,000 rows are benchmarked at 256 values a picture: the same rows at 4,096 would be an 8 GB
cache and hours of HNSW building on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, finish, table  # noqa: E402

EXPANSIONS = (64, 128, 256, 512, 1024)  # usearch expansion_search values measured beside headstart's


def write_features(path: Path, n: int, dim: int, seed: int = 0) -> None:
    import numpy as np

    from headstart.cache import CacheHeader, CacheWriter

    fp = {
        "backbone": "tiny",
        "layer": "embed",
        "pooling": None,
        "alpha": None,
        "weights": "none",
        "seed": 0,
        "keras_version": None,
        "input_size": 32,
        "resize": "squash",
        "jpeg_draft": True,
        "preprocessing": "keras.applications.mobilenet.preprocess_input",
        "precision": "float32",
        "dtype": "float16",
        "backend": "tensorflow",
    }
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (200, dim)).astype(np.float32)
    header = CacheHeader(dim=dim, dtype="float16", fingerprint=fp, class_names=("a", "b"), root="/synthetic")
    block = 20_000
    with CacheWriter(path, header) as w:
        for start in range(0, n, block):
            m = min(block, n - start)
            labels = rng.integers(0, 200, m)
            x = np.maximum(centres[labels] + rng.normal(0, 0.7, (m, dim)).astype(np.float32), 0)
            w.append(x, list(labels % 2), [f"a/{i}.jpg" for i in range(start, start + m)])
            w.commit()
        w.close(complete=True)


def measure(path: Path, queries: int, index: bool) -> dict:
    import numpy as np

    from headstart.cache import open_cache
    from headstart.similar import ExactSearch

    row = {}
    with open_cache(path) as cache:
        t0 = time.perf_counter()
        exact = ExactSearch(cache)
        row["open_s"] = time.perf_counter() - t0
        rows = np.linspace(0, len(cache) - 1, queries).astype(int)
        q = np.stack([exact.vector(int(r)) for r in rows])
        t0 = time.perf_counter()
        truth = [exact.search(q[i : i + 1], 10)[0] for i in range(queries)]
        row["exact_ms"] = (time.perf_counter() - t0) / queries * 1000
        if index:
            from headstart.similar_index import build_index, open_index

            t0 = time.perf_counter()
            build_index(cache)
            row["index_build_s"] = time.perf_counter() - t0
            approx = open_index(cache, rebuild=False)
            default = approx.index.expansion_search
            for ef in sorted({default, *EXPANSIONS}):  # a search-time setting: one build, each measured
                approx.index.expansion_search = ef
                t0 = time.perf_counter()
                found = [approx.search(q[i : i + 1], 10)[0] for i in range(queries)]
                ms = (time.perf_counter() - t0) / queries * 1000
                recall = float(np.mean([len({r for r, _ in f} & {r for r, _ in t}) / 10 for f, t in zip(found, truth)]))
                row[f"ef{ef}"] = {"index_ms": ms, "recall_at_10": recall}
                print(f"  expansion_search {ef}: {ms:.2f} ms a query, recall@10 {recall:.3f}", flush=True)
                if ef == default:
                    row["index_ms"], row["recall_at_10"] = ms, recall
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000x4096,1000000x256", help="ROWSxDIM, comma-separated")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--no-index", action="store_true", help="exact search only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cores = cpu_cores()
    t_start = time.perf_counter()
    print(describe_load(cores))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            n, dim = (int(v) for v in size.lower().split("x"))
            path = Path(tmp) / f"synthetic-{n}x{dim}.h5"
            t0 = time.perf_counter()
            write_features(path, n, dim)
            print(f"{n:,} x {dim}: cache written in {time.perf_counter() - t0:.0f} s", flush=True)
            row = {"rows": n, "dim": dim, **measure(path, args.queries, not args.no_index)}
            rows.append(row)
            print(row, flush=True)
    print(
        table(
            ["rows", "dim", "open s", "exact ms/query", "index build s", "index ms/query", "recall@10"],
            [
                [
                    r["rows"],
                    r["dim"],
                    r["open_s"],
                    r["exact_ms"],
                    r.get("index_build_s"),
                    r.get("index_ms"),
                    r.get("recall_at_10"),
                ]
                for r in rows
            ],
            digits=3,
        )
    )
    finish({"rows": rows, "queries": args.queries}, t_start, cores, args.json)


if __name__ == "__main__":
    main()
