"""Shared benchmark plumbing: options, picture folders (real or synthetic), device report, tables, JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pets-sample"
DEFAULT_MOBILENET_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Quiet TensorFlow's C++ start-up chatter and let several processes share one GPU; set before
# TensorFlow is imported (here and in the child processes, which inherit the environment).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def add_common_options(parser: argparse.ArgumentParser, *, default_n: dict[str, int]) -> None:
    """The options every benchmark takes; ``default_n`` maps backbone -> default picture count."""
    parser.add_argument("--backbone", choices=("vgg16", "mobilenet"), default="mobilenet")
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="pictures to use (default: " + ", ".join(f"{k} {v}" for k, v in default_n.items()) + "); "
        "more than the folder holds cycles through it under new file names",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="pictures per model call (default 32)")
    parser.add_argument(
        "--precision", default="auto", help="auto (float16 on GPU, float32 on CPU), float32, bfloat16 or float16"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: headstart's default, CPU cores up to 8)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder with one sub-folder per class (default: {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="write N random JPEGs to a temp folder instead of reading --data"
    )
    parser.add_argument(
        "--synthetic-size",
        default="500x375",
        help="WIDTHxHEIGHT of the --synthetic JPEGs (default 500x375, a typical photo)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="mobilenet: the shared 0.25 ImageNet file if present, else none; vgg16: none "
        "(its ImageNet weights cannot be downloaded here; same speed)",
    )
    parser.add_argument("--alpha", type=float, default=0.25, help="MobileNet width (default 0.25)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result JSON to this file")
    parser.default_n = default_n  # type: ignore[attr-defined]


def resolve_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other options."""
    if args.n is None:
        args.n = parser.default_n[args.backbone]  # type: ignore[attr-defined]
    if args.n < 1:
        parser.error(f"Expected --n of at least 1. Received: {args.n}.")
    if args.weights is None:
        if args.backbone == "mobilenet" and DEFAULT_MOBILENET_WEIGHTS.is_file():
            args.weights = str(DEFAULT_MOBILENET_WEIGHTS)
        else:
            args.weights = "none"
    if args.backbone != "mobilenet":
        args.alpha = None
    return args


def model_config(args: argparse.Namespace, precision: str | None = None):
    """The headstart `ExtractionConfig` these options describe (imports Keras)."""
    from headstart.extractor.options import make_config

    return make_config(args.backbone, weights=args.weights, alpha=args.alpha, precision=precision or args.precision)


# -- pictures ----------------------------------------------------------------------------------


def source_pictures(args: argparse.Namespace, workdir: Path) -> tuple[list[tuple[str, Path]], str]:
    """Distinct pictures as (class name, path), classes interleaved; and a line saying where from."""
    if args.synthetic:
        return write_synthetic(workdir / "synthetic", args.n, args.synthetic_size), (
            f"{args.n} synthetic {args.synthetic_size} JPEGs (random smooth colour fields + noise)"
        )
    root = Path(args.data)
    if not root.is_dir():
        sys.exit(
            f"Expected the picture folder {root} (one sub-folder per class, e.g. ../shared/data/pets-sample). "
            "Received: no such folder. Pass --data DIR, or --synthetic to benchmark on generated JPEGs."
        )
    per_class = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            per_class.append([(cls, f) for f in files])
    if len(per_class) < 2:
        sys.exit(f"Expected at least two class sub-folders with pictures in {root}. Received: {len(per_class)}.")
    interleaved = [item for group in _zip_longest(per_class) for item in group]
    return interleaved, f"{root} ({len(interleaved)} pictures in {len(per_class)} classes)"


def _zip_longest(groups: Sequence[Sequence]) -> list[list]:
    longest = max(len(g) for g in groups)
    return [[g[i] for g in groups if i < len(g)] for i in range(longest)]


def write_synthetic(folder: Path, n: int, size: str = "500x375", seed: int = 0) -> list[tuple[str, Path]]:
    """Write ``n`` photo-like JPEGs (smooth random colours plus sensor-like noise) in two classes."""
    import numpy as np
    from PIL import Image

    width, height = (int(v) for v in size.lower().split("x"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = ("class_a", "class_b")[i % 2]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        arr = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        path = folder / cls / f"synth.{i}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        out.append((cls, path))
    return out


def make_dataset(pictures: Sequence[tuple[str, Path]], n: int, folder: Path) -> Path:
    """A folder ``folder/<class>/`` with ``n`` pictures linked from ``pictures``, cycling under new names."""
    for i in range(n):
        cls, src = pictures[i % len(pictures)]
        dest = folder / cls / f"r{i // len(pictures)}_{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            dest.symlink_to(src.resolve())
        except OSError:  # e.g. a file system without symlinks
            shutil.copyfile(src, dest)
    return folder


def dataset_paths(folder: Path) -> list[Path]:
    """The pictures of a folder in the order headstart extracts them."""
    from headstart.extractor.scan import scan_dataset

    ds = scan_dataset(folder)
    return [folder / rel for rel, _ in ds.items]


# -- machine -----------------------------------------------------------------------------------


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def device_info(with_tensorflow: bool = True) -> dict[str, Any]:
    """What the benchmark runs on: CPU cores, and the devices Keras' backend sees."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_cores": cpu_cores(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    if with_tensorflow:
        import keras

        info["keras"] = keras.__version__
        info["backend"] = keras.backend.backend()
        if info["backend"] == "tensorflow":
            import tensorflow as tf

            info["tensorflow"] = tf.__version__
            gpus = tf.config.list_physical_devices("GPU")
            names = []
            for gpu in gpus:
                try:
                    names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
                except Exception:  # pragma: no cover
                    names.append(gpu.name)
            info["gpus"] = names
        else:  # pragma: no cover - other Keras backends
            info["gpus"] = []
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was with other work (None on Windows)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_load(cores: int) -> str:
    load = load_average()
    if load is None:
        return "load average: unknown"
    busy = ""
    if load[0] > 0.5 * cores:
        busy = " (the machine is busy: other work competes for the cores, figures will be noisy)"
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {cores} cores{busy}"


def describe_device(info: dict[str, Any]) -> str:
    gpus = info.get("gpus")
    where = f"GPU: {', '.join(gpus)}" if gpus else "no GPU visible to Keras (CPU only)"
    backend = f", Keras {info['keras']} / {info['backend']}" if "keras" in info else ""
    return f"{info.get('cpu') or info['machine']}, {info['cpu_cores']} CPU cores; {where}{backend}"


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``5 > /proc/self/clear_refs``), so that `peak_rss_since_reset_mb`
    is the peak from now on. Returns False where that is not possible.

    ru_maxrss cannot be reset in a multi-threaded process: a thread that exits folds the peak so
    far into a per-process maximum that clear_refs does not touch, hence VmHWM below.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mb() -> float | None:
    """VmHWM of /proc/self/status in MiB: the peak RSS since `reset_peak_rss` (Linux only, else None)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# -- output ------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[fmt(v, digits) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def emit_json(result: dict[str, Any], path: Path | None) -> None:
    """The result as one JSON line (last line of the output), and in ``path`` if given."""
    text = json.dumps(result, sort_keys=True, default=str)
    if path:
        Path(path).write_text(text + "\n")
    print("JSON " + text, flush=True)


def finish(result: dict[str, Any], t_start: float, cores: int, path: Path | None) -> None:
    """The closing lines of every benchmark: wall time, load at the end, and the JSON line."""
    result["wall_s"] = time.perf_counter() - t_start
    result["load_average_end"] = load_average()
    print(describe_load(cores) + " (at the end)")
    print(f"\nwhole benchmark: {result['wall_s']:.0f} s")
    emit_json(result, path)


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
