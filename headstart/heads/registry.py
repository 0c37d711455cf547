"""The heads by name, and a fitted head on disk: ``head.json`` + ``head.npz`` + ``standardization.npz``.

A saved head is arrays (NumPy ``.npz`` read with ``allow_pickle=False``) and JSON: nothing in it
can run code when it is loaded. Every value read back is checked (names from the registry,
options through the same checks as a new head, array names, shapes and finiteness) before the
head is handed out. Folders from headstart 0.1 (``head.joblib``, a pickle; ``head.keras``) are
refused with a message that says to train again.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from headstart.errors import HeadError, RunError
from headstart.heads.base import FITTED_KEYS, fitted_info
from headstart.heads.keras_heads import MLPHead, SoftmaxHead
from headstart.heads.knn import KNNHead
from headstart.heads.logreg import LogRegHead
from headstart.heads.names import HEAD_NAMES
from headstart.heads.sources import Standardizer, load_arrays
from headstart.heads.svm import SVMHead
from headstart.heads.zeroshot import ZeroShotHead

HEADS: dict[str, type] = {
    "softmax": SoftmaxHead,
    "logreg": LogRegHead,
    "mlp": MLPHead,
    "knn": KNNHead,
    "svm": SVMHead,
    "zeroshot": ZeroShotHead,
}
assert tuple(HEADS) == HEAD_NAMES, "headstart.heads.names.HEAD_NAMES must list the registry"
HEAD_FORMAT = 2
HEAD_JSON = "head.json"
HEAD_ARRAYS = "head.npz"
SCALER_FILE = "standardization.npz"
HEAD_FILES = (HEAD_JSON, HEAD_ARRAYS, SCALER_FILE)
LEGACY_FILES = ("head.joblib", "head.keras")
MAX_FEATURES = 1 << 20


def head_names() -> list[str]:
    return list(HEADS)


def head_name(head) -> str:
    """The registry name of a head instance (``"softmax"``, ``"logreg"``, ``"mlp"``)."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise HeadError(f"Expected a head among {', '.join(HEADS)}. Received: {type(head).__name__}.")


def head_class(name: str) -> type:
    if not isinstance(name, str) or name not in HEADS:
        raise HeadError(f"Expected a head among {', '.join(HEADS)}. Received: {name!r}.")
    return HEADS[name]


def check_learns(name: str, what: str) -> None:
    """Refuse a head that learns from no picture (zeroshot) for ``what`` (a sweep, a learning curve)."""
    if getattr(head_class(name), "needs_texts", False):
        raise HeadError(
            f"The {name} head learns from no training picture: {what} of it would be one flat point. "
            f"Train it with headstart train CACHE --head {name}, and set it beside trained heads with "
            f"headstart compare CACHE --heads {name},logreg."
        )


def head_params(name: str) -> list[str]:
    """Names of the options a head takes."""
    return sorted(head_class(name)._get_param_names())


def make_head(name: str, **params: Any):
    """A new, unfitted head by name, with options checked now rather than at ``fit``."""
    cls = head_class(name)
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise HeadError(
            f"Head {name!r} takes no option {', '.join(unknown)}. It takes: {', '.join(head_params(name))}."
        )
    rs = params.get("random_state", 0)
    if rs is not None and not (isinstance(rs, numbers.Integral) and not isinstance(rs, bool)):
        raise HeadError(f"Expected random_state to be an integer or None. Received: {rs!r}.")
    head = cls(**params)
    try:
        head._check_params()
    except (ValueError, TypeError) as err:
        raise HeadError(f"Bad option for head {name!r}: {err}") from None
    return head


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {"__pairs__": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"__repr__": repr(value)}


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        pairs = value.get("__pairs__")
        if isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs):
            return {_from_json(k): _from_json(v) for k, v in pairs}
        return None  # a value that JSON cannot hold (a RandomState): left at None
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def head_params_json(head) -> dict[str, Any]:
    """The head's options as JSON-ready values (for ``run.json`` and ``head.json``)."""
    return {k: _to_json(v) for k, v in head.get_params().items()}


def save_head(head, folder: str | Path) -> list[Path]:
    """Write a fitted head into ``folder``: ``head.json``, ``head.npz``, ``standardization.npz``.

    Returns the files written. Nothing written can run code when read back (see `load_head`).
    """
    check_is_fitted(head)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": HEAD_FORMAT,
        "head": head_name(head),
        "params": head_params_json(head),
        "classes": np.asarray(head.classes_).tolist(),
        "n_features": int(head.n_features_in_),
        "fitted": fitted_info(head),
        "history": head.history_,
    }
    files = [folder / name for name in HEAD_FILES]
    np.savez(files[1], **head.arrays_)
    head.scaler_.save(files[2])
    files[0].write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return files


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"Expected {path}. Received: no such file.") from None
    except UnicodeDecodeError:
        raise RunError(f"Expected a JSON file {path}. Received: bytes that are not UTF-8 text.") from None
    except OSError as err:
        raise RunError(f"Cannot read {path}: {err.strerror or err}.") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise RunError(f"Expected a JSON file {path}. Received: invalid JSON ({err}).") from None


def _need(cond: bool, path: Path, what: str, got: Any) -> None:
    if not cond:
        shown = repr(got)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise RunError(f"Expected {what} in {path}. Received: {shown}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_head(folder: str | Path):
    """Read back a head written by `save_head`, checking every value; it predicts as it did when saved."""
    folder = Path(folder)
    legacy = [name for name in LEGACY_FILES if (folder / name).exists()]
    if legacy:
        raise RunError(
            f"{folder} holds a head saved by headstart 0.1 ({legacy[0]}), a format that can run code when "
            "loaded and is no longer read. Train the head again from its cache (seconds): headstart train CACHE."
        )
    path = folder / HEAD_JSON
    meta = _read_json(path)
    _need(isinstance(meta, dict), path, "a JSON object", type(meta).__name__)
    _need(meta.get("format") == HEAD_FORMAT, path, f"head format {HEAD_FORMAT}", meta.get("format"))
    name = meta.get("head")
    _need(isinstance(name, str) and name in HEADS, path, f"a head among {', '.join(HEADS)}", name)
    classes = meta.get("classes")
    _need(
        isinstance(classes, list)
        and len(classes) >= 2
        and (all(_is_int(c) and c >= 0 for c in classes) or all(isinstance(c, str) for c in classes))
        and classes == sorted(set(classes)),
        path,
        "classes as two or more distinct sorted labels (numbers or names)",
        classes,
    )
    n_features = meta.get("n_features")
    _need(_is_int(n_features) and 0 < n_features <= MAX_FEATURES, path, "n_features a positive integer", n_features)
    params = meta.get("params")
    _need(isinstance(params, dict), path, "params as an object", params)
    history = meta.get("history", [])
    _need(isinstance(history, list) and all(isinstance(r, dict) for r in history), path, "history as a list", history)
    fitted = meta.get("fitted", {})
    _need(
        isinstance(fitted, dict)
        and set(fitted) <= set(FITTED_KEYS)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fitted.values()),
        path,
        "fitted values as numbers",
        fitted,
    )
    for key in ("n_iter_", "best_epoch_", "k_", "n_rows_"):
        if key in fitted:
            _need(_is_int(fitted[key]) and 0 <= fitted[key] <= 1 << 40, path, f"fitted {key} an integer", fitted[key])
    for key in ("C_", "temperature_"):
        if key in fitted:
            v = fitted[key]
            _need(np.isfinite(v) and 1e-6 <= v <= 1e6, path, f"fitted {key} a positive number", v)
    cls = HEADS[name]
    try:
        head = make_head(name, **{k: _from_json(v) for k, v in params.items() if k in cls._get_param_names()})
    except HeadError as err:
        raise RunError(f"Expected valid options in {path}. Received: {err}") from None
    head.classes_ = np.asarray(classes)
    head.n_features_in_ = n_features
    head.history_ = history
    for k, v in fitted.items():
        setattr(head, k, v)
    head.scaler_ = Standardizer.load(folder / SCALER_FILE, n_features)
    try:
        shapes = head.array_shapes(n_features, len(classes))
    except HeadError as err:
        raise RunError(f"Expected the fitted values of a {name} head in {path}. Received: {err}") from None
    head.arrays_ = load_arrays(folder / HEAD_ARRAYS, shapes)
    problem = head.check_arrays(head.arrays_)
    if problem:
        raise RunError(f"Expected valid arrays in {folder / HEAD_ARRAYS}. Received: {problem}.")
    return head
