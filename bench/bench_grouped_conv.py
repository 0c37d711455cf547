"""ConvNeXt's slow layer, alone: a 7x7 convolution over 8 x 56 x 56 x 96 as Keras builds it
(`Conv2D(groups=96)`) against the same weights as `DepthwiseConv2D` (what headstart builds).

    .venv/bin/python bench/bench_grouped_conv.py

Prints milliseconds per call of each (mean of --calls after one warm-up), their ratio and the
largest output difference. See docs/backbones.md, "ConvNeXt".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_cores, describe_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    import keras
    import numpy as np

    print(describe_load(cpu_cores()))
    x = np.random.default_rng(0).random((8, 56, 56, 96), dtype=np.float32)
    grouped = keras.layers.Conv2D(96, 7, padding="same", groups=96)
    depthwise = keras.layers.DepthwiseConv2D(7, padding="same")
    grouped(x), depthwise(x)
    kernel, bias = grouped.get_weights()
    depthwise.set_weights([kernel.reshape(7, 7, 96, 1), bias])
    ms = {}
    for name, layer in (("Conv2D(groups=96)", grouped), ("DepthwiseConv2D", depthwise)):
        layer(x)
        t0 = time.perf_counter()
        for _ in range(args.calls):
            np.asarray(layer(x))
        ms[name] = (time.perf_counter() - t0) / args.calls * 1000
        print(f"{name}: {ms[name]:.0f} ms per call")
    diff = float(np.abs(np.asarray(grouped(x)) - np.asarray(depthwise(x))).max())
    print(f"grouped / depthwise: {ms['Conv2D(groups=96)'] / ms['DepthwiseConv2D']:.1f}x; max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
