"""ONNX Runtime against Keras on each backbone's feature rows (not only probabilities, which a head may saturate).

    .venv/bin/python bench/bench_onnx_features.py                 # every registered backbone, ~3 min here
    .venv/bin/python bench/bench_onnx_features.py --backbone vgg16

Each backbone (random weights; VGG16 at ``fc2``) in a fresh process: the feature model `export`
ships for ONNX (pixels → portable resize → preprocessing → backbone → pooled features) is written
with ``headstart.ship.onnx_file.write_onnx`` and run by ONNX Runtime on 2 random pictures of an odd
size; prints the largest absolute feature difference to Keras, the largest feature, their ratio,
the conversion's seconds and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load, device_info, finish, table  # noqa: E402

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np
import onnxruntime
from headstart.extractor.options import make_config
from headstart.ship.model import pixel_model
from headstart.ship.onnx_file import write_onnx
backbone = sys.argv[1]
config = make_config(backbone, "fc2" if backbone == "vgg16" else None, weights="none", precision="float32",
                     alpha=0.25 if backbone == "mobilenet" else None)
model = pixel_model(config, portable=True)
x = np.random.default_rng(0).integers(0, 256, (2, config.input_size + 37, config.input_size + 11, 3)).astype("float32")
want = np.asarray(model(x, training=False), np.float64)
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    write_onnx(model, Path(tmp), "pixels", "features")
    seconds = time.perf_counter() - t0
    session = onnxruntime.InferenceSession(str(Path(tmp) / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.asarray(session.run(None, {"pixels": x})[0], np.float64)
diff, scale = float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))
print("RESULT " + json.dumps({"backbone": backbone, "features": int(want.shape[-1]), "max_abs_diff": diff,
                             "max_abs_feature": scale, "relative": diff / scale if scale else None,
                             "convert_s": seconds,
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    from headstart.settings.backbones import BACKBONES

    names = [n for n in BACKBONES if n != "tiny"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="all", help=f"one of {', '.join(names)}, a comma list, or all")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    backbones = names if args.backbone == "all" else args.backbone.split(",")
    t_start, cores = time.perf_counter(), cpu_cores()
    print(describe_load(cores))
    rows = []
    for backbone in backbones:
        proc = subprocess.run([sys.executable, "-c", CHILD, backbone], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            rows.append({"backbone": backbone, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]})
            print(f"{backbone}: {rows[-1]['error']}", flush=True)
            continue
        rows.append(json.loads(line[len("RESULT ") :]))
        print(
            f"{backbone}: max |d feature| {rows[-1]['max_abs_diff']:.1e} of {rows[-1]['max_abs_feature']:.3g}",
            flush=True,
        )
    print(
        table(
            ["backbone", "features", "max |d feature|", "max |feature|", "relative", "convert s", "peak MiB"],
            [
                [
                    r["backbone"],
                    r.get("features"),
                    None if "max_abs_diff" not in r else f"{r['max_abs_diff']:.1e}",
                    None if "max_abs_feature" not in r else f"{r['max_abs_feature']:.3g}",
                    None if r.get("relative") is None else f"{r['relative']:.1e}",
                    r.get("convert_s"),
                    r.get("peak_rss_mb"),
                ]
                for r in rows
            ],
        )
    )
    finish({"device": device_info(), "rows": rows}, t_start, cores, args.json)


if __name__ == "__main__":
    main()
