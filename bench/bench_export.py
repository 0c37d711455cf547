"""Peak memory, time and agreement of `headstart export` per format, for VGG16 fc2 (528 MB of float32 weights) or any backbone.

    .venv/bin/python bench/bench_export.py                                  # VGG16 fc2, all formats
    .venv/bin/python bench/bench_export.py --formats onnx,onnx-keras        # ours vs Keras' own ONNX export
    .venv/bin/python bench/bench_export.py --backbone all --formats onnx    # every registered backbone

A run folder is made per backbone from a cache of the backbone's own features on 40 generated
pictures (random weights: the same size and speed as ImageNet's; a logreg head on a random split,
so the probabilities are not all 0 or 1). Then each format is exported in a fresh process
(``headstart.ship.export.export``, with its check of the written file: the largest probability
difference to the Keras model, max |Δp|), which reports its own peak resident memory (ru_maxrss)
and the time; the baseline is a process that only builds the model. ``onnx-keras`` is the ONNX
export headstart used before (Keras' ``model.export(format="onnx")``, tf2onnx with the weights
folded in). A child whose resident memory passes ``--limit-gib`` is stopped and reported so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, device_info, finish, table  # noqa: E402

FEATURES = r"""
import sys, numpy as np
from headstart.extractor.options import make_config
from headstart.ship.model import pixel_model
backbone, layer, out = sys.argv[1:4]
config = make_config(backbone, layer or None, weights="none", precision="float32",
                     alpha=0.25 if backbone == "mobilenet" else None)
pixels = np.random.default_rng(0).integers(0, 256, (40, config.input_size, config.input_size, 3)).astype("float32")
model = pixel_model(config)
np.save(out, np.concatenate([model.predict_on_batch(pixels[i:i + 8]) for i in range(0, 40, 8)]))
"""

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
run, out, fmt = sys.argv[1:4]
diff = None
if fmt == "build-only":
    from headstart.ship.model import classifier_model, pixel_model
    from headstart.heads.run_reader import load_run
    from headstart.ship.runs import run_config
    info, head = load_run(run)
    model = classifier_model(pixel_model(run_config(info, run)), head.to_keras(), head.n_features_in_, head.classes_, 2)
    size = 0
else:
    import headstart.ship.export as export_module
    if fmt == "onnx-keras":  # the export before bounded memory: Keras' own, tf2onnx with the weights folded in
        fmt = "onnx"
        export_module.write_onnx = lambda model, folder, i, o: model.export(str(folder / "model.onnx"), format="onnx", verbose=False)
    result = export_module.export(run, out, fmt)
    diff = result.max_difference
    from pathlib import Path
    p = Path(out)
    size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
print("RESULT " + json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             "seconds": time.perf_counter() - t0, "size_mb": size / 1e6, "max_difference": diff}))
"""

LAYERS = {"vgg16": "fc2"}
"""The layer benchmarked where it is not the backbone's default (VGG16: fc2, with the 411 MB fc1)."""


def make_run(workdir: Path, backbone: str) -> Path:
    """A logreg run on a cache of ``backbone``'s own features (computed in a child process)."""
    import numpy as np

    from headstart.cache import CacheHeader, CacheWriter
    from headstart.extractor.options import make_config
    from headstart.heads.training import train

    workdir.mkdir(parents=True, exist_ok=True)
    layer = LAYERS.get(backbone, "")
    feats = workdir / "features.npy"
    subprocess.run([sys.executable, "-c", FEATURES, backbone, layer, str(feats)], check=True, capture_output=True)
    x = np.load(feats).astype("float32")
    config = make_config(
        backbone, layer or None, weights="none", precision="float32", alpha=0.25 if backbone == "mobilenet" else None
    )
    rng = np.random.default_rng(0)
    score = (x - x.mean(0)) @ rng.normal(0, 1, x.shape[1])
    y = (score > np.median(score)).astype(int)
    header = CacheHeader(
        dim=x.shape[1], dtype="float16", fingerprint=config.fingerprint(), class_names=("a", "b"), root=str(workdir)
    )
    with CacheWriter(workdir / "cache.h5", header) as w:
        w.append(x, y.tolist(), [f"p{i}.jpg" for i in range(len(x))])
        w.close(complete=True)
    train(workdir / "cache.h5", "logreg", workdir / "run", plots=False)
    return workdir / "run"


def run_child(args: list[str], limit_gib: float) -> dict:
    """Run one child; stop it if its resident memory passes ``limit_gib``. Its RESULT line, or why it failed."""
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=out, stderr=err, text=True)
        watch, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, watch.memory_info().rss)
            except psutil.Error:
                pass
            if peak > limit_gib * 2**30:
                proc.kill()
                proc.wait()
                return {
                    "error": f"stopped: over {limit_gib:g} GiB after {time.perf_counter() - t0:.0f} s",
                    "peak_rss_mb": peak / 2**20,
                    "seconds": time.perf_counter() - t0,
                    "stopped": True,
                }
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        lines = [ln for ln in stderr.strip().splitlines() if "Error" in ln or "error" in ln]
        return {"error": (lines or stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    from headstart.settings.backbones import BACKBONES

    names = [n for n in BACKBONES if n != "tiny"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16", help=f"one of {', '.join(names)}, a comma list, or all")
    parser.add_argument("--formats", default="keras,saved_model,onnx,litert", help="comma list; also onnx-keras")
    parser.add_argument("--no-baseline", action="store_true", help="skip the build-only process")
    parser.add_argument("--limit-gib", type=float, default=12.0, help="stop a child past this resident memory")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    backbones = names if args.backbone == "all" else args.backbone.split(",")
    for b in backbones:
        if b not in names:
            parser.error(f"Expected --backbone among {', '.join(names)} or all. Received: {b!r}.")
    t_start = time.perf_counter()
    cores = cpu_cores()
    device = device_info()
    print(describe_load(cores))
    formats = ([] if args.no_baseline else ["build-only"]) + args.formats.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for backbone in backbones:
            run = make_run(Path(tmp) / backbone, backbone)
            for fmt in formats:
                out = Path(tmp) / backbone / (f"model-{fmt}.keras" if fmt == "keras" else f"model-{fmt}")
                row = {"backbone": backbone, "format": fmt, **run_child([str(run), str(out), fmt], args.limit_gib)}
                rows.append(row)
                if "error" in row:
                    print(f"{backbone} {fmt}: {row['error']}", flush=True)
                    continue
                diff = row.get("max_difference")
                print(
                    f"{backbone} {fmt}: peak {row['peak_rss_mb']:.0f} MiB, {row['seconds']:.0f} s"
                    + (f", max |dp| {diff:.1e}" if diff is not None else ""),
                    flush=True,
                )
    for r in rows:
        base = next(
            (b["peak_rss_mb"] for b in rows if b["backbone"] == r["backbone"] and b["format"] == "build-only"), 0
        )
        if base and "peak_rss_mb" in r:
            r["peak_vs_build_only"] = r["peak_rss_mb"] / base
    print(
        table(
            ["backbone", "format", "peak MiB", "x build-only", "seconds", "size MB", "max |dp|", "note"],
            [
                [
                    r["backbone"],
                    r["format"],
                    r.get("peak_rss_mb"),
                    r.get("peak_vs_build_only"),
                    r.get("seconds"),
                    r.get("size_mb"),
                    None if r.get("max_difference") is None else f"{r['max_difference']:.1e}",
                    r.get("error", ""),
                ]
                for r in rows
            ],
            digits=1,
        )
    )
    finish({"device": device, "backbones": backbones, "rows": rows}, t_start, cores, args.json)


if __name__ == "__main__":
    main()
