"""Export: a run's model (`headstart.ship.model`) written in one of the formats, verified against the model in memory.

The model is built only from Keras' own layers, so ``keras.saving.load_model(PATH)`` (safe mode)
reads it in a Python without headstart: ``pixels`` (a batch of RGB 0-255, any height and width,
one size per batch) → ``Resizing`` as the cache was made (squash or centre crop, antialiased
bilinear on float pixels: for caches with the ``float32`` resampler, the very pixels that extraction
and ``predict`` compute) → the backbone's preprocessing as layers → the frozen backbone up to the
cached layer and its pooling → the head (standardization included) → one probability per class.

The class names travel inside the ``.keras`` file (``headstart.json``, an extra member of its zip
archive that Keras ignores) and in ``labels.txt`` beside every format. A folder format's
``headstart.json`` also lists every file of the export with its SHA-256: ``--overwrite`` replaces
a folder only while it holds those files alone, unchanged, and deletes nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import ExportError
from headstart.heads.run_reader import load_run
from headstart.settings.config import ExtractionConfig
from headstart.ship.exported import LABELS, METADATA, load_exported, read_metadata
from headstart.ship.model import INPUT_NAME, OUTPUT_NAME, classifier_model, pixel_model
from headstart.ship.onnx_file import run_onnx, write_onnx
from headstart.ship.runs import run_config

log = logging.getLogger(__name__)

FORMATS = ("keras", "saved_model", "onnx", "litert")
"""``keras``: one ``.keras`` file; ``onnx`` under TensorFlow: `headstart.ship.onnx_file` (graph and
weights apart, bounded memory); the others go through Keras' ``model.export(format=...)``."""

_KERAS_FORMAT = {"saved_model": "tf_saved_model", "onnx": "onnx", "litert": "litert"}
PORTABLE_FORMATS = ("onnx", "litert")
"""Formats whose converters lack the antialiased resize: they get the ``portable`` one."""
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite"}
FORMAT_NEEDS = {
    "saved_model": "TensorFlow",
    "onnx": "pip install -e '.[onnx]' in the headstart clone: tf2onnx and onnx under TensorFlow, onnxscript under torch",
    "litert": "TensorFlow's converter; ai-edge-litert to run the file",
}

# -- writing -----------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What `export` wrote: the model's path (a file or a folder), its format, the time it took,
    and the largest probability difference of the written file to the model in memory (None: not
    checked, the format's runtime is not installed)."""

    path: Path
    format: str
    seconds: float
    max_difference: float | None = None
    cache_difference: float | None = None
    """Largest probability difference, on generated pictures, between the exported model and the
    run's own pipeline (the cache's decoding and resize, as ``predict`` does); None: not measured."""
    cache_note: str | None = None
    """Set when the exported model cannot reproduce the cache's resize: what differs and the figure."""


def _metadata(class_names: Sequence[str], config: ExtractionConfig, extra: dict[str, Any]) -> dict[str, Any]:
    import keras

    return {
        "format": 1,
        "class_names": list(class_names),
        "input": {"name": INPUT_NAME, "layout": "batch, height, width, RGB", "range": "0-255", "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "meaning": "one probability per class, in class_names order"},
        "extraction": config.fingerprint(),
        "keras_version": keras.__version__,
        **extra,
    }


def _check_out(out: Path, fmt: str, overwrite: bool) -> None:
    if fmt == "keras" and out.suffix != ".keras":
        raise ExportError(f"Expected an --out path ending in .keras for --format keras. Received: {out}.")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ExportError(f"Expected --out to be a new path. Received: {out}, which exists; pass --overwrite.")
    if not _ours(out, fmt):
        raise ExportError(_not_ours(out, fmt))


def _not_ours(out: Path, fmt: str) -> str:
    what = " (or files it did not write, or files that changed since)" if fmt != "keras" else ""
    return (
        f"Expected --out to be a new path or a {fmt} export of headstart{what} (--overwrite replaces only those). "
        f"Received: {out}; choose another --out. Nothing was deleted."
    )


def write_model(
    model,
    out: str | os.PathLike,
    fmt: str,
    metadata: dict[str, Any],
    overwrite: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Write ``model`` as ``fmt`` at ``out``: a ``.keras`` file, or for the other formats a folder
    with the model, ``labels.txt`` and ``headstart.json``. Built beside ``out`` under a temporary
    name, checked (``verify``: see `verify_export`) and only then moved in with `os.replace`;
    ``overwrite`` replaces only an earlier export."""
    import keras

    if fmt not in FORMATS:
        raise ExportError(f"Expected --format among {', '.join(FORMATS)}. Received: {fmt!r}.")
    out = Path(out)
    _check_out(out, fmt, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    probe = _probe(int(metadata["extraction"]["input_size"]))
    # A direct call (not predict) marks the model as called, which Keras' ONNX export requires.
    expected = np.asarray(keras.ops.convert_to_numpy(model(probe, training=False)))
    diff = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent))
    text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    try:
        if fmt == "keras":
            staged = tmp / out.name
            model.save(staged)
            with zipfile.ZipFile(staged, "a") as zf:
                zf.writestr(METADATA, text)
        else:
            staged = tmp / "export"
            target = staged / MODEL_FILES[fmt] if fmt in MODEL_FILES else staged
            if fmt != "saved_model":
                staged.mkdir()
            _keras_export(model, target, fmt)
            (staged / LABELS).write_text("".join(f"{n}\n" for n in metadata["class_names"]), encoding="utf-8")
            # The manifest of what we wrote: --overwrite replaces the folder only while it holds these alone.
            folder_meta = {**metadata, "files": _tree_manifest(staged)}
            (staged / METADATA).write_text(json.dumps(folder_meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if verify:
            diff = verify_export(expected, probe, staged, fmt, out)
        if out.exists() and out.is_dir():
            if not _ours(out, fmt):  # checked at the start; someone may have added a file since
                raise ExportError(_not_ours(out, fmt))
            shutil.rmtree(out)  # an earlier export of ours, holding only the files it lists
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, fmt, time.perf_counter() - t0, diff)


def _keras_export(model, target: Path, fmt: str) -> None:
    import keras

    try:
        if fmt == "onnx" and keras.backend.backend() == "tensorflow":
            write_onnx(model, target.parent, INPUT_NAME, OUTPUT_NAME)  # bounded memory, see its module
        else:
            model.export(str(target), format=_KERAS_FORMAT[fmt], verbose=False)
    except ImportError as err:
        raise ExportError(
            f"Expected the packages Keras needs for --format {fmt} ({FORMAT_NEEDS[fmt]}). Received: {err}."
        ) from None
    except Exception as err:  # noqa: BLE001 - converters raise anything; one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"Could not export --format {fmt} under the {keras.backend.backend()} backend: {first}. "
            "The README lists which format works under which backend."
        ) from None


def _ours(path: Path, fmt: str) -> bool:
    """Whether ``path`` is an export headstart wrote (so --overwrite may replace it)."""
    if path.is_symlink():
        return False
    if fmt == "keras":
        try:
            read_metadata(path)
        except ExportError:
            return False
        return path.is_file()
    if not path.is_dir() or not (path / LABELS).is_file():
        return False
    try:
        files = read_metadata(path).get("files")
    except ExportError:
        return False
    if not isinstance(files, dict):  # an export older than the manifest: we cannot tell what is ours
        return False
    for folder, dirs, names in os.walk(path):
        for name in dirs + names:
            entry = Path(folder) / name
            if entry.is_symlink():
                return False
        for name in names:
            entry = Path(folder) / name
            rel = entry.relative_to(path).as_posix()
            if rel == METADATA:
                continue
            if not entry.is_file() or files.get(rel) != _sha256(entry):
                return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _tree_manifest(folder: Path) -> dict[str, str]:
    """``{path relative to folder: SHA-256}`` of every file under ``folder`` but ``headstart.json``."""
    return {
        p.relative_to(folder).as_posix(): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.relative_to(folder).as_posix() != METADATA
    }


def export(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "keras",
    *,
    weights: str | os.PathLike | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Export a run's classifier from pixels to probabilities (see the module docstring).

    ``weights`` is the backbone's weights file when the run's cache was extracted with one and it
    has moved (its SHA-256 must match). ``verify`` runs the written file (onnxruntime, LiteRT, a
    reloaded Keras model) on a random picture and checks it agrees with the model in memory."""
    if fmt not in FORMATS:
        raise ExportError(f"Expected --format among {', '.join(FORMATS)}. Received: {fmt!r}.")
    _check_out(Path(out), fmt, overwrite)
    info, head = load_run(run_dir)
    config = run_config(info, run_dir, weights)
    class_names = list(info["class_names"])
    features = pixel_model(config, portable=fmt in PORTABLE_FORMATS)
    model = classifier_model(features, head.to_keras(), int(head.n_features_in_), head.classes_, len(class_names))
    diff = cache_difference(model, config)
    note = resize_note(config, diff)
    if note:  # the CLI prints it; a Python caller has it in the result
        log.info("%s", note)
    extra = {
        "run": {"head": info["head"], "path": str(Path(run_dir).resolve())},
        "resize": "portable" if fmt in PORTABLE_FORMATS else "antialias",
        "cache_difference": {
            "max_abs_probability": diff,
            "pictures": "generated, see headstart.ship.export.probe_pictures",
        },
    }
    result = write_model(model, out, fmt, _metadata(class_names, config, extra), overwrite=overwrite, verify=verify)
    result.cache_difference, result.cache_note = diff, note
    return result


def probe_pictures(input_size: int) -> dict[str, bytes]:
    """Generated JPEG files of the sizes where resizes part ways: smaller than the input (upscaled),
    larger (downscaled; large enough for JPEG draft decoding), non-square, and the input's size."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, (h, w) in {
        "smaller": (input_size * 4 // 7, input_size * 4 // 7),
        "non-square": (input_size * 2 // 3, input_size * 3 // 2),
        "larger": (input_size * 9 // 2, input_size * 4),
        "input-size": (input_size, input_size),
    }.items():
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float64)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
        out[name] = buf.getvalue()
    return out


def cache_difference(model, config: ExtractionConfig) -> float:
    """Largest probability difference between ``model`` on whole decoded pictures (what an app
    gives it) and ``model`` on the pixels the cache's own decoding and resize give (what extraction
    and ``predict`` compute; the model's resize leaves a picture of its input size as it is)."""
    import io

    from headstart.extractor.decode import load_image

    size = (config.input_size, config.input_size)
    worst = 0.0
    for data in probe_pictures(config.input_size).values():
        whole = load_image(io.BytesIO(data), None)
        ours = load_image(io.BytesIO(data), size, config.resize, config.jpeg_draft, config.resampler, config.decoder)
        got = np.asarray(model.predict_on_batch(whole[None].astype(np.float32)), np.float64)
        want = np.asarray(model.predict_on_batch(np.asarray(ours, np.float32)[None]), np.float64)
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


CACHE_TOLERANCE = 1e-3
"""Largest probability difference to the run's pipeline that `export` accepts without a note."""


def resize_note(config: ExtractionConfig, diff: float) -> str | None:
    """What keeps the exported model from computing the cache's pixels, with the measured figure;
    None when it agrees within `CACHE_TOLERANCE`."""
    if diff <= CACHE_TOLERANCE:
        return None
    causes = []
    if config.resampler != "float32":
        causes.append(
            f"the cache was resized with the {config.resampler} resampler (rounded 8-bit pixels), "
            "which no Keras layer reproduces"
        )
    if config.jpeg_draft:
        causes.append("the cache decoded large JPEGs at a reduced scale (--draft), the exported model gets them whole")
    why = "; ".join(causes) or "its resize differs"
    return (
        f"The exported model cannot reproduce the cache's pixels exactly: {why}. Measured on generated "
        f"pictures: probabilities differ from `headstart predict` by up to {diff:.3g}. Re-extract with "
        "--resampler float32 --no-draft (the defaults) for the same pixels everywhere."
    )


def _probe(input_size: int) -> np.ndarray:
    """Two random pictures of an odd size (the resize has work to do)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, input_size + 37, input_size + 11, 3)).astype(np.float32)


def verify_export(expected: np.ndarray, probe: np.ndarray, path: Path, fmt: str, out: Path) -> float | None:
    """Largest difference between ``expected`` (the Keras model on ``probe``) and the file written
    at ``path`` run on ``probe`` (onnxruntime, LiteRT, TensorFlow, Keras); None when the runtime
    for the format is not installed. Over 1e-3 is an `ExportError` (a converter that dropped or
    changed an op), and nothing is written at ``out``."""
    try:
        got = _run_file(path, fmt, probe)
    except ImportError as err:
        log.warning("%s not checked: the runtime for %s is not installed (%s)", out, fmt, err)
        return None
    except Exception as err:  # noqa: BLE001 - any runtime failure means the file is not usable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"Expected an exported {fmt} model that runs. Received: {first}; nothing written.") from None
    diff = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
    if not diff <= 1e-3:
        raise ExportError(
            f"Expected the exported {fmt} model to give the probabilities of the Keras model. "
            f"Received: a largest difference of {diff:.3g} on a random picture; nothing written at {out}."
        )
    return diff


def _run_file(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """Probabilities of the file at ``path`` (format ``fmt``) on the pixels ``x``."""
    if fmt == "keras":
        model, _ = load_exported(path)
        return model.predict_on_batch(x)
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # keep a reference: its variables live as long as it
        return loaded.serve(tf.constant(x)).numpy()
    if fmt == "onnx":
        return run_onnx(path, x)  # refuses files other than those headstart.json lists
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path / MODEL_FILES[fmt]))
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


__all__ = [
    "FORMATS",
    "ExportResult",
    "export",
    "verify_export",
    "write_model",
]
