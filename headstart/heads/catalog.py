"""Every run, comparison and sweep below a folder, one row per run, grouped by the cache it was fitted on.

`find_runs` walks the folder without following symbolic links (so a link loop cannot trap it)
and reads only ``run.json``, ``metrics.json``, ``comparison.json`` and ``sweep.json`` (and a
sweep's journal when it is unfinished): the heads are not loaded and no file is hashed, so a
listing of hundreds of runs takes a moment. A folder that cannot be read, a JSON file that is
broken or not what headstart writes, becomes a note (path, reason), never an error.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.errors import RunError
from headstart.heads.run_reader import validate_run_json
from headstart.heads.rundir import (
    COMPARISON_JSON,
    COMPARISON_KIND,
    JOURNAL,
    METRICS_JSON,
    RUN_JSON,
    SWEEP_JSON,
    SWEEP_KIND,
    journal_header,
)

MAX_JSON_BYTES = 64 << 20
SORT_KEYS = {  # column → (descending?, missing last)
    "val_accuracy": True,
    "test_accuracy": True,
    "log_loss": False,
    "ece": False,
    "fit_seconds": False,
    "date": True,
    "head": False,
    "path": False,
}
_KEY_PARAMS = ("hidden_units", "dropout", "learning_rate", "C", "k", "class_weight", "batch_size", "epochs")
_FITTED_SHOWN = {"C_": "C", "k_": "k", "best_epoch_": "best_epoch", "temperature_": "T"}


@dataclass
class Catalog:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def groups(self) -> list[dict[str, Any]]:
        """Rows grouped by cache (fingerprint digest, else path), groups in order of first row."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            g = out.setdefault(
                row["cache_key"], {"cache": row["cache"], "fingerprint_digest": row["cache_digest"], "rows": []}
            )
            g["rows"].append(row)
        return list(out.values())


def _load_json(path: Path) -> Any:
    """A JSON value, or `RunError` naming what is wrong (unreadable, too large, not JSON)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except OSError as err:
        raise RunError(f"cannot read {path.name}: {err.strerror or err}") from None
    if len(data) > MAX_JSON_BYTES:
        raise RunError(f"{path.name} is larger than {MAX_JSON_BYTES >> 20} MB")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RunError(f"{path.name} is not valid JSON ({str(err)[:60]})") from None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _split_metrics(metrics: Any, split: str) -> dict[str, float | None]:
    m = metrics.get(split) if isinstance(metrics, dict) else None
    m = m if isinstance(m, dict) else {}
    return {k: _num(m.get(k)) for k in ("accuracy", "log_loss", "ece")}


def key_params(head: str, params: Mapping[str, Any], fitted: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The options that differ from the head's defaults, and what fitting chose: ``C=0.01 T=1.3``."""
    parts = []
    for k in _KEY_PARAMS:
        if k in params and k in defaults and params[k] != defaults[k] and not isinstance(params[k], (dict, list)):
            parts.append(f"{k}={params[k]:g}" if isinstance(params[k], float) else f"{k}={params[k]}")
    prompts = params.get("prompts")
    if isinstance(prompts, list) and list(prompts) != list(defaults.get("prompts") or ()):
        parts.append(f"prompts={len(prompts)}")  # zeroshot: its prompts are in run.json's text_tower
    for k, shown in _FITTED_SHOWN.items():
        v = fitted.get(k) if isinstance(fitted, dict) else None
        if _num(v) is not None and not any(p.startswith(f"{shown}=") for p in parts):
            parts.append(f"{shown}={v:.3g}" if isinstance(v, float) else f"{shown}={v}")
    return " ".join(parts)


def _defaults(head: str) -> dict[str, Any]:
    from headstart.heads.registry import head_class

    sig = inspect.signature(head_class(head).__init__)
    return {n: p.default for n, p in sig.parameters.items() if n != "self"}


def _run_row(folder: Path, top: Path, group: str) -> dict[str, Any]:
    info = validate_run_json(_load_json(folder / RUN_JSON), folder / RUN_JSON)
    metrics_path = folder / METRICS_JSON
    metrics = _load_json(metrics_path) if metrics_path.is_file() else {}
    val, test = _split_metrics(metrics, "val"), _split_metrics(metrics, "test")
    cache = info["cache"]
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    return {
        "path": str(folder.relative_to(top)) if folder != top else ".",
        "kind": "run",
        "group": group,
        "head": info["head"],
        "params": key_params(info["head"], params, info.get("fitted") or {}, _defaults(info["head"])),
        "val_accuracy": val["accuracy"],
        "test_accuracy": test["accuracy"],
        "log_loss": test["log_loss"] if test["log_loss"] is not None else val["log_loss"],
        "ece": test["ece"] if test["ece"] is not None else val["ece"],
        "fit_seconds": _num(info.get("fit_seconds")),
        "calibrate": info.get("calibrate") if isinstance(info.get("calibrate"), str) else None,
        "cache": cache["path"],
        "cache_digest": cache["fingerprint_digest"],
        "cache_key": f"{cache['fingerprint_digest']}|{cache['path']}",
        "date": info.get("created") if isinstance(info.get("created"), str) else None,
    }


def _unfinished_sweep_row(folder: Path, top: Path) -> dict[str, Any] | None:
    """A row for a sweep that was interrupted: its best finished trial (validation only)."""
    best, n = None, 0
    try:
        with open(folder / JOURNAL, "rb") as fh:
            lines = fh.read(MAX_JSON_BYTES).split(b"\n")[1:]
    except OSError:
        return None
    for raw in lines:
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        val = rec.get("val") if isinstance(rec, dict) else None
        if not isinstance(val, dict) or _num(val.get("accuracy")) is None or not isinstance(rec.get("head"), str):
            continue
        n += 1
        if best is None or val["accuracy"] > best["val"]["accuracy"]:
            best = rec
    if best is None:
        return None
    from headstart.heads.registry import HEADS

    head = best["head"] if best["head"] in HEADS else "?"
    header = journal_header(folder / JOURNAL) or {}
    cache = header.get("cache") if isinstance(header.get("cache"), str) else "?"
    digest = header.get("fingerprint_digest") if isinstance(header.get("fingerprint_digest"), str) else None
    params = best.get("params") if isinstance(best.get("params"), dict) else {}
    return {
        "path": str(folder.relative_to(top)) if folder != top else ".",
        "kind": "sweep (unfinished)",
        "group": f"{n} trials done",
        "head": head,
        "params": " ".join(f"{k}={v}" for k, v in params.items() if isinstance(v, (int, float, str))),
        "val_accuracy": _num(best["val"].get("accuracy")),
        "test_accuracy": None,
        "log_loss": _num(best["val"].get("log_loss")),
        "ece": _num(best["val"].get("ece")),
        "fit_seconds": _num(best.get("seconds")),
        "calibrate": None,
        "cache": cache,
        "cache_digest": digest,
        "cache_key": f"{digest}|{cache}",
        "date": best.get("finished") if isinstance(best.get("finished"), str) else None,
    }


def find_runs(top: str | os.PathLike) -> Catalog:
    """Rows for every run below ``top`` (and notes for what could not be read)."""
    top = Path(top)
    if not top.exists():
        raise RunError(f"Expected a folder of runs. Received: {top} (no such folder).")
    if not top.is_dir():
        raise RunError(f"Expected a folder of runs. Received: {top} (not a folder).")
    cat = Catalog()
    groups: dict[Path, str] = {}  # run folder → the comparison or sweep it belongs to

    def onerror(err: OSError) -> None:
        cat.notes.append({"path": str(err.filename), "reason": f"cannot read the folder: {err.strerror or err}"})

    for root, dirs, files in os.walk(top, onerror=onerror, followlinks=False):
        here = Path(root)
        for d in list(dirs):
            p = here / d
            if d.startswith("."):
                dirs.remove(d)  # hidden: a result being written, or a lock
            elif p.is_symlink():
                dirs.remove(d)
                cat.notes.append({"path": str(p), "reason": "a symbolic link to a folder, not followed"})
        names = set(files)
        try:
            if COMPARISON_JSON in names:
                data = _load_json(here / COMPARISON_JSON)
                if (
                    isinstance(data, dict)
                    and data.get("kind") == COMPARISON_KIND
                    and isinstance(data.get("runs"), list)
                ):
                    for r in data["runs"]:
                        if isinstance(r, str) and "/" not in r:
                            groups[here / r] = f"compare {here.name}"
                else:
                    raise RunError(f"{COMPARISON_JSON} is not a headstart comparison")
            if SWEEP_JSON in names:
                data = _load_json(here / SWEEP_JSON)
                if not (isinstance(data, dict) and data.get("kind") == SWEEP_KIND):
                    raise RunError(f"{SWEEP_JSON} is not a headstart sweep")
                n = len(data["trials"]) if isinstance(data.get("trials"), list) else "?"
                groups[here / "best"] = f"sweep {here.name}, best of {n}"
            elif JOURNAL in names and journal_header(here / JOURNAL) is not None:
                row = _unfinished_sweep_row(here, top)
                if row:
                    cat.rows.append(row)
            if RUN_JSON in names:
                cat.rows.append(_run_row(here, top, groups.get(here, "")))
        except RunError as err:
            cat.notes.append({"path": str(here), "reason": str(err)})
        except (OSError, KeyError, TypeError, AttributeError, ValueError) as err:
            cat.notes.append({"path": str(here), "reason": f"unexpected content ({type(err).__name__}: {err})"})
    return cat


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows sorted by a column of `SORT_KEYS`; rows without a value go last."""
    if key not in SORT_KEYS:
        raise RunError(f"Expected --sort among {', '.join(SORT_KEYS)}. Received: {key!r}.")
    desc = SORT_KEYS[key]
    have = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    return sorted(have, key=lambda r: r[key], reverse=desc) + missing
