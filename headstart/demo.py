"""The offline demo: generated pictures, the bundled MobileNet vs the same network with random weights.

`make_pictures` draws a small labelled picture set (shapes on textured backgrounds, no download);
`run_demo` extracts it twice, with MobileNet 0.25's ImageNet weights shipped in ``headstart/data``
and with random weights, and compares the heads on both caches. `pets_steps` lists what
``headstart demo --pets`` runs: the real job on Microsoft's Dogs vs Cats.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import DemoError, HeadstartError

log = logging.getLogger(__name__)

WEIGHTS_SHA256 = "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"
SHAPES = ("circle", "square", "star", "triangle")
DEMO_JSON = "demo.json"


def bundled_weights() -> Path:
    """The MobileNet 0.25 (224 px, no top) ImageNet weights shipped inside the package (``--weights bundled``)."""
    from headstart.settings.config import bundled_weights as shipped

    try:
        return shipped()
    except HeadstartError as err:
        raise DemoError(str(err)) from None


# -- pictures ----------------------------------------------------------------------------------


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = 4
        radii = [r] * 4
    elif shape == "triangle":
        corners = 3
        radii = [r] * 3
    else:  # star: five points
        corners = 10
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    return [
        (cx + rad * math.cos(angle + 2 * math.pi * k / corners), cy + rad * math.sin(angle + 2 * math.pi * k / corners))
        for k, rad in enumerate(radii)
    ]


def draw_picture(shape: str, rng: np.random.Generator, size: int = 160):
    """One RGB picture: a filled ``shape`` of random size, place, angle and colour on a random
    background (a smooth colour field with noise, sometimes stripes), plus a few small distractors."""
    from PIL import Image, ImageDraw, ImageFilter

    coarse = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.4:  # faint stripes in the background
        step = int(rng.integers(6, 16))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for x in range(-size, 2 * size, step):
            draw.line([(x, 0), (x + size * rng.uniform(-0.5, 0.5), size)], fill=colour, width=1)
    for _ in range(int(rng.integers(0, 4))):  # small distractor blobs
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 8)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    r = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    outline = tuple(int(v) for v in rng.integers(0, 256, 3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=2)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill, outline=outline)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 8, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_pictures(root: str | os.PathLike, per_class: int = 40, size: int = 160, seed: int = 0) -> Path:
    """Write ``per_class`` JPEGs of each shape in ``root/<shape>/`` (seeded: the same set every time)."""
    root = Path(root)
    for c, shape in enumerate(SHAPES):
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng((seed, c, i))
            draw_picture(shape, rng, size).save(folder / f"{shape}.{i}.jpg", quality=92)
    return root


# -- the demo ----------------------------------------------------------------------------------


@dataclass
class DemoResult:
    """What the demo made: the two comparisons (ImageNet and random weights) and where they are."""

    out: Path
    pictures: int
    tables: dict[str, list[dict[str, Any]]]
    seconds: float
    report: Path | None = None
    plots: list[Path] = field(default_factory=list)
    feature_scale: dict[str, float] = field(default_factory=dict)  # mean |feature| of each cache


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write beside, then rename: ``demo.json`` is whole or absent."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"Expected --out to be a folder. Received: {out} (a file).")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_JSON).is_file():
        raise DemoError(
            f"Expected --out to be a new or empty folder, or an earlier demo to replace. "
            f"Received: {out} (holds other files, no {DEMO_JSON}); choose another --out."
        )


def run_demo(
    out: str | os.PathLike = "headstart-demo",
    *,
    per_class: int = 40,
    seed: int = 0,
    say: Callable[[str], None] = log.info,
) -> DemoResult:
    """Generate pictures in ``out/pictures``, extract them with the bundled MobileNet 0.25 (ImageNet
    weights) and with random weights, and compare the heads on both caches (``out/runs-*``)."""
    from headstart.cache import open_cache
    from headstart.extractor.options import make_config
    from headstart.extractor.runner import extract
    from headstart.heads import training

    t0 = time.perf_counter()
    out = Path(out)
    _check_out(out)
    weights = bundled_weights()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / DEMO_JSON).is_file():  # mark the folder ours first: an interrupted demo can be run again
        _write_json(out / DEMO_JSON, {"complete": False})
    pictures = out / "pictures"
    if not pictures.is_dir():
        make_pictures(pictures.with_name("pictures.tmp"), per_class=per_class, seed=seed)
        os.replace(pictures.with_name("pictures.tmp"), pictures)
    n = per_class * len(SHAPES)
    say(f"Generated {n} pictures of {len(SHAPES)} shapes ({', '.join(SHAPES)}) in {pictures}")
    tables: dict[str, list[dict[str, Any]]] = {}
    plots, scale = [], {}
    for name, weights_arg in (("imagenet", str(weights)), ("random", "none")):
        config = make_config("mobilenet", alpha=0.25, weights=weights_arg, precision="float32", seed=seed)
        cache = out / f"{name}.h5"
        res = extract(pictures, cache, config, overwrite=True)
        say(f"Extracted {res.extracted} pictures with MobileNet 0.25, {name} weights, in {res.seconds:.1f} s")
        with open_cache(cache) as c:
            scale[name] = float(np.abs(c.read()).mean())
        # A learning rate of 0.01 (not 0.001) lets the Keras heads converge within the demo's minute.
        result = training.compare(cache, out / f"runs-{name}", params={"random_state": seed, "learning_rate": 0.01})
        tables[name] = result.rows
        plots.append(result.out / "comparison.png")
    seconds = time.perf_counter() - t0
    _write_json(
        out / DEMO_JSON,
        {
            "complete": True,
            "pictures": n,
            "classes": list(SHAPES),
            "weights": {"imagenet": str(weights), "random": "none"},
            "tables": tables,
            "feature_scale": scale,
            "seconds": round(seconds, 1),
        },
    )
    return DemoResult(out=out, pictures=n, tables=tables, seconds=seconds, plots=plots, feature_scale=scale)


# -- the real job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of ``demo --pets``: the command a user would type, and the call that does it."""

    command: str
    run: Callable[[], Any]


def pets_steps(
    data: str | os.PathLike = "data",
    out: str | os.PathLike = "runs/pets",
    cache: str | os.PathLike = "pets-vgg16-fc2.h5",
) -> list[Step]:
    """Download Dogs vs Cats (786 MB), extract VGG16 fc2 with ImageNet weights, compare the heads,
    and draw logreg's learning curve beside the comparison (``OUT-curve``): what 1, 2, ... 2,048,
    4,096 labelled pictures a class give against the whole training split, which is what the
    notebook's cap at 3,000 a class cost."""
    from headstart import download
    from headstart.extractor import options, runner
    from headstart.heads import curve, training

    data, out, cache = Path(data), Path(out), Path(cache)
    folder = data / "PetImages"
    curve_out = out.with_name(out.name + "-curve")
    return [
        Step(f"headstart download pets --out {data}", lambda: download.download_pets(data)),
        Step(
            f"headstart extract {folder} --out {cache}",
            lambda: runner.extract(folder, cache, options.make_config("vgg16", "fc2")),
        ),
        Step(f"headstart compare {cache} --out {out}", lambda: training.compare(cache, out)),
        Step(
            f"headstart curve {cache} --head logreg --out {curve_out}",
            lambda: curve.learning_curve([cache], "logreg", curve_out),
        ),
    ]
