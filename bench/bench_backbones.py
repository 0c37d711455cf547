"""Each registered backbone at its default layer and input size: pictures/s of the model alone
(random weights: the same speed as ImageNet's), parameters and weights size, feature size.

    .venv/bin/python bench/bench_backbones.py                      # all, about 5 min on 2 busy cores
    .venv/bin/python bench/bench_backbones.py --only resnet50,convnext_tiny
    .venv/bin/python bench/bench_backbones.py --write-package-data # what `headstart backbones` shows

Each backbone runs in its own process (no memory or compiled graphs carried from one to the next):
one warm-up batch, then ``--batches`` timed batches of ``--batch-size`` random pictures, float32.
``--write-package-data`` stores the figures in ``headstart/settings/backbone_speeds.json`` with the
machine they were measured on; `headstart backbones` reads that file and never measures at run time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, cpu_cores, describe_load, device_info, finish, table  # noqa: E402

PACKAGE_DATA = REPO / "headstart" / "settings" / "backbone_speeds.json"

CHILD = r"""
import json, sys, time
import numpy as np
from headstart.extractor.model import build_model
from headstart.extractor.options import make_config
name, batch, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = make_config(name, weights="none", precision="float32")
t0 = time.perf_counter()
model = build_model(config)
build_s = time.perf_counter() - t0
x = np.random.default_rng(0).uniform(0, 255, (batch, config.input_size, config.input_size, 3)).astype("float32")
model.predict_on_batch(x)
t0 = time.perf_counter()
for _ in range(batches):
    model.predict_on_batch(x)
seconds = time.perf_counter() - t0
params = int(model.count_params())
print("RESULT " + json.dumps({"backbone": name, "layer": config.layer, "input_size": config.input_size,
    "features": int(model.output_shape[-1]), "parameters": params, "weights_mb": params * 4 / 1e6,
    "pictures_per_second": batch * batches / seconds, "build_s": build_s}))
"""


def main() -> None:
    from headstart.settings.backbones import BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated backbone names (default: all but tiny)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2, help="timed batches after one warm-up batch")
    parser.add_argument("--write-package-data", action="store_true", help=f"write {PACKAGE_DATA.name}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else [n for n in BACKBONES if n != "tiny"]
    t_start = time.perf_counter()
    cores = cpu_cores()
    device = device_info()
    print(describe_load(cores))
    rows = []
    for name in names:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(args.batch_size), str(args.batches)], capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-1500:]}")
            continue
        rows.append(json.loads(line[len("RESULT ") :]))
        print(f"{name}: {rows[-1]['pictures_per_second']:.1f} pictures/s", flush=True)
    print(
        table(
            ["backbone", "layer", "input", "features", "weights MB", "pictures/s"],
            [
                [r["backbone"], r["layer"], r["input_size"], r["features"], r["weights_mb"], r["pictures_per_second"]]
                for r in rows
            ],
        )
    )
    result = {"device": device, "batch_size": args.batch_size, "batches": args.batches, "backbones": rows}
    if args.write_package_data:
        old = json.loads(PACKAGE_DATA.read_text()) if PACKAGE_DATA.exists() else {"backbones": {}}
        old["backbones"].update({r["backbone"]: r for r in rows})
        old["measured_on"] = (
            f"{device.get('cpu') or device['machine']}, {cores} CPU cores, "
            f"Keras {device['keras']} / {device['backend']}, batch {args.batch_size}, float32"
        )
        old["command"] = "python bench/bench_backbones.py --write-package-data"
        PACKAGE_DATA.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        print(f"wrote {PACKAGE_DATA}")
    finish(result, t_start, cores, args.json)


if __name__ == "__main__":
    main()
