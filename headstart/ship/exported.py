"""An exported model read back: its ``headstart.json`` (class names, settings) and the Keras model, checked.

The class names travel inside the ``.keras`` file (``headstart.json``, an extra member of its zip
archive that Keras ignores) and in ``labels.txt`` beside every format.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from headstart.errors import ExportError

METADATA = "headstart.json"
LABELS = "labels.txt"


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.keras`` file (a model written by ``headstart export``), not a run folder."""
    return Path(path).suffix == ".keras" and not Path(path).is_dir()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``headstart.json`` inside an exported ``.keras`` file (or SavedModel folder), checked."""
    path = Path(path)
    try:
        if path.is_dir():
            text = (path / METADATA).read_text(encoding="utf-8")
        else:
            with zipfile.ZipFile(path) as zf:
                with zf.open(METADATA) as fh:
                    text = fh.read(1 << 20).decode("utf-8")
        meta = json.loads(text)
        names = meta["class_names"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ValueError("class_names is not a list of strings")
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise ExportError(
            f"Expected a model written by headstart export. Received: {path} ({type(err).__name__}: {err})."
        ) from None
    return meta


def load_exported(path: str | os.PathLike):
    """``(keras model, class names)`` of a ``.keras`` file written by `export` (safe mode)."""
    import keras

    meta = read_metadata(path)
    if str(meta.get("extraction", {}).get("backbone", "")).startswith("hub:"):
        try:
            import keras_hub  # noqa: F401 - registers the KerasHub layers the file names
        except ImportError as err:
            raise ExportError(
                f"Expected KerasHub to load a hub backbone's model (pip install keras-hub). Received: {err}."
            ) from None
    problem = _weights_problem(Path(path))
    if problem:
        raise ExportError(f"Expected a .keras model that keeps its data in itself. Received: {path} ({problem}).")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # Keras raises ValueError, TypeError, OSError... for a broken file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ExportError(f"Expected a loadable .keras model. Received: {path} ({first}).") from None
    if model.output_shape[-1] != len(meta["class_names"]):
        raise ExportError(
            f"Expected {len(meta['class_names'])} outputs, one per class name. Received: {model.output_shape}."
        )
    return model, list(meta["class_names"])


def _weights_problem(path: Path) -> str | None:
    """What in the ``.keras`` file's ``model.weights.h5`` would make Keras read another file (links,
    external storage, virtual datasets: `headstart.cache.h5safety`), or None."""
    import h5py

    from headstart.cache import h5safety

    try:
        with zipfile.ZipFile(path) as zf:
            if "model.weights.h5" not in zf.namelist():
                return None  # Keras says what is missing
            with zf.open("model.weights.h5") as member, h5py.File(member, "r") as f:
                found = h5safety.problem(f)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # not a zip or not HDF5: Keras refuses it in its own words
    return f"model.weights.h5: {found}" if found else None
