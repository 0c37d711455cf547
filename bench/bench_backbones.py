"""Every registered backbone, float32 and bfloat16: the model alone vs the headstart pipeline on the
same pictures, in the same process, with where and when it was measured.

    .venv/bin/python bench/bench_backbones.py                           # all, 15-25 min on 2 idle cores
    .venv/bin/python bench/bench_backbones.py --only resnet50,convnext_tiny --precisions float32
    .venv/bin/python bench/bench_backbones.py --write-package-data      # what `headstart backbones` shows

Each (backbone, precision) runs in its own process, random weights (the same speed as ImageNet's):
one warm-up batch, then the model alone over ``--n`` decoded pictures, then `extract()` handed the
same built model over the same pictures as files (decode threads, cache writes): pipeline / model
alone is the ratio. CPU seconds are counted beside wall seconds in each child.

Figures taken on a busy machine are noise (VGG16 showed 0.6 pictures/s at a load average of 12, 6.4
when idle). So ``--write-package-data`` refuses, in one line, when the 1-minute load average was
above ``--max-load`` before any child (after waiting up to ``--settle`` seconds for the previous
child's own load to decay), or when a child's CPU time in the model was well
below wall time x the threads it could use (another process took the cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, cpu_cores, describe_load, device_info, finish, load_average, table, write_synthetic  # noqa: E402

PACKAGE_DATA = REPO / "headstart" / "settings" / "backbone_speeds.json"
HUB_PRESET = "hub:dinov2_small"  # one KerasHub preset, measured where keras-hub is installed
# Offline (no Kaggle), the preset's config cannot be fetched. The same architecture is then built from
# its published config (this one has the preset's 22,582,656 parameters, at its 518 x 518 input) and
# saved as a local preset folder with random weights: the speed is the preset's.
STAND_INS = {
    "hub:dinov2_small": (
        "DINOV2Backbone",
        dict(
            patch_size=14,
            num_layers=12,
            hidden_dim=384,
            num_heads=6,
            intermediate_dim=1536,
            image_shape=(518, 518, 3),
            position_embedding_shape=(518, 518, 3),
        ),
        22_582_656,
    )
}
STAND_IN = r"""
import sys
import keras_hub
from keras_hub.src.utils.preset_utils import load_json
handle, cls, params, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    load_json(handle)
    print("ONLINE")
except Exception:
    import json
    backbone = getattr(keras_hub.models, cls)(**json.loads(sys.argv[5]))
    assert backbone.count_params() == params, backbone.count_params()
    backbone.save_to_preset(folder)
    print("STAND-IN")
"""

CHILD = r"""
import json, sys, time
import numpy as np
from headstart.extractor.decode import load_image
from headstart.extractor.embed import Embedder
from headstart.extractor.options import has_accelerator, make_config
from headstart.extractor.runner import extract
from headstart.extractor.scan import scan_dataset
name, precision, batch, data, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
weights = sys.argv[6] if len(sys.argv) > 6 else "none"
config = make_config(name, weights=weights, precision=precision)
t0 = time.perf_counter()
emb = Embedder(config, batch)
build_s = time.perf_counter() - t0
ds = scan_dataset(data)
size = (config.input_size, config.input_size)
pixels = [load_image(f"{data}/{rel}", size, config.resize, config.jpeg_draft) for rel, _ in ds.items]
emb(pixels[:batch])  # warm-up: graph tracing and one-off allocations
batches = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
w0, c0 = time.perf_counter(), time.process_time()
for b in batches:
    emb(b)
model_s, model_cpu_s = time.perf_counter() - w0, time.process_time() - c0
w0 = time.perf_counter()
res = extract(data, out, config, batch_size=batch, embedder=emb)
pipe_s = time.perf_counter() - w0
params = int(emb.model.count_params())
print("RESULT " + json.dumps({"backbone": name, "precision": precision, "layer": config.layer,
    "input_size": config.input_size, "features": int(emb.model.output_shape[-1]), "parameters": params,
    "weights_mb": params * 4 / 1e6, "n": len(pixels), "extracted": res.extracted,
    "pictures_per_second": len(pixels) / model_s, "pipeline_pictures_per_second": res.extracted / pipe_s,
    "model_cpu_per_wall": model_cpu_s / model_s, "build_s": build_s, "on_accelerator": has_accelerator()}))
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def stand_in_folder(name: str, tmp: Path) -> Path | None:
    """A local preset folder standing in for ``name`` when its config cannot be downloaded, else None."""
    if name not in STAND_INS:
        return None
    folder = tmp / f"{name.replace(':', '_')}-preset"
    if folder.is_dir():
        return folder
    from headstart.settings import hub

    cls, config, params = STAND_INS[name]
    _, _, handle = hub.preset_of(name)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-c", STAND_IN, handle, cls, str(params), str(folder), json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if "STAND-IN" in proc.stdout:
        print(f"{name}: offline, measured on a stand-in (its architecture, random weights)", flush=True)
        return folder
    return None


def settle(max_load: float, timeout: float) -> float | None:
    """The 1-minute load average once it falls below ``max_load``, waiting at most ``timeout`` seconds.

    The previous child's own threads raise the 1-minute figure for a while after it ends (it decays with a
    one-minute time constant), so the load is read before each child, not after: what is left above the limit
    once the wait is over is other work. Contention during a child shows in its CPU time (see busy_reason).
    """
    deadline = time.monotonic() + timeout
    while True:
        load = load_average()
        if load is None or load[0] <= max_load or time.monotonic() >= deadline:
            return None if load is None else load[0]
        time.sleep(2.0)


def busy_reason(loads: list[float], rows: list[dict], max_load: float, cores: int) -> str | None:
    """Why these figures must not be written, or None when the machine was quiet throughout."""
    if loads and max(loads) > max_load:
        return f"the 1-minute load average reached {max(loads):.2f} (limit {max_load})"
    for r in rows:  # on an idle CPU-only machine TensorFlow keeps most of the cores busy inside the model
        if r.get("on_accelerator"):
            continue
        if r["model_cpu_per_wall"] < 0.5 * cores:
            return (
                f"{r['backbone']} {r['precision']} used {r['model_cpu_per_wall']:.2f} CPU-seconds per second "
                f"on {cores} cores: other work took the cores"
            )
    return None


def main() -> None:
    from headstart.settings.backbones import BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated backbone names (default: all but tiny, + hub)")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=32, help="pictures per measurement (synthetic 500x375 JPEGs)")
    parser.add_argument("--max-load", type=float, default=1.2, help="refuse to write figures above this load")
    parser.add_argument(
        "--settle",
        type=float,
        default=90.0,
        help="seconds to wait before each child for the load to fall below --max-load",
    )
    parser.add_argument("--write-package-data", action="store_true", help=f"write {PACKAGE_DATA.name}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else [n for n in BACKBONES if n != "tiny"] + [HUB_PRESET]
    precisions = args.precisions.split(",")
    t_start = time.perf_counter()
    cores = cpu_cores()
    device = device_info()
    print(describe_load(cores))
    loads = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pictures"
        write_synthetic(data, args.n)
        for name in names:
            for precision in precisions:
                cmd = [sys.executable, "-c", CHILD, name, precision, str(args.batch_size), str(data)]
                cmd.append(str(Path(tmp) / f"{name.replace(':', '_')}-{precision}.h5"))
                stand_in = stand_in_folder(name, Path(tmp))
                if stand_in is not None:
                    cmd.append(str(stand_in))
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
                before = settle(args.max_load, args.settle)
                if before is not None:
                    loads.append(before)
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"{name} {precision}: failed: {last[:300]}", flush=True)
                    continue
                row = json.loads(line[len("RESULT ") :])
                if stand_in is not None:
                    row["stand_in"] = "same architecture from the published config, random weights (offline)"
                row["ratio"] = row["pipeline_pictures_per_second"] / row["pictures_per_second"]
                rows.append(row)
                print(
                    f"{name} {precision}: model {row['pictures_per_second']:.1f}, pipeline "
                    f"{row['pipeline_pictures_per_second']:.1f} pictures/s (ratio {row['ratio']:.2f})",
                    flush=True,
                )
    print(
        table(
            ["backbone", "precision", "features", "weights MB", "model pict/s", "pipeline pict/s", "ratio"],
            [
                [
                    r["backbone"],
                    r["precision"],
                    r["features"],
                    r["weights_mb"],
                    r["pictures_per_second"],
                    r["pipeline_pictures_per_second"],
                    r["ratio"],
                ]
                for r in rows
            ],
            digits=2,
        )
    )
    measured_on = {
        "cpu": cpu_model(),
        "cores": cores,
        "batch_size": args.batch_size,
        "pictures": args.n,
        "keras": device.get("keras"),
        "backend": device.get("backend"),
        "date": datetime.date.today().isoformat(),
        "max_load_average": max(loads) if loads else None,
    }
    result = {"device": device, "measured_on": measured_on, "backbones": rows}
    if args.write_package_data:
        reason = busy_reason(loads, rows, args.max_load, cores)
        if reason:
            print(f"Not writing {PACKAGE_DATA.name}: {reason}; run again on a quiet machine.")
            finish(result, t_start, cores, args.json)
            sys.exit(3)
        data = {"backbones": {}, "measured_on": measured_on}
        for r in rows:
            entry = data["backbones"].setdefault(r["backbone"], {k: r[k] for k in ("features", "weights_mb", "layer")})
            entry[r["precision"]] = {k: r[k] for k in ("pictures_per_second", "pipeline_pictures_per_second", "ratio")}
            if "stand_in" in r:
                entry["stand_in"] = r["stand_in"]
        data["command"] = "python bench/bench_backbones.py --write-package-data"
        PACKAGE_DATA.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        print(f"wrote {PACKAGE_DATA}")
    finish(result, t_start, cores, args.json)


if __name__ == "__main__":
    main()
