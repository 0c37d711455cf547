"""What a sweep searches: parsing ``--grid`` / ``--range`` options into typed values, grid and random settings."""

from __future__ import annotations

import inspect
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from headstart.errors import HeadError
from headstart.heads.registry import head_class, head_params

# What a random search draws from when the user gives no values or ranges (lo, hi, log).
DEFAULT_SPACE: dict[str, dict[str, tuple[float, float, bool]]] = {
    "softmax": {"learning_rate": (1e-4, 1e-2, True)},
    "mlp": {"hidden_units": (64, 1024, True), "dropout": (0.0, 0.7, False), "learning_rate": (1e-4, 1e-2, True)},
    "logreg": {"C": (1e-4, 10.0, True)},
    "svm": {"C": (1e-5, 1.0, True)},
    "knn": {"k": (1, 50, True)},
}
# Options whose default (None, "auto") does not say their type.
_TYPES = {"C": float, "k": int, "batch_size": int, "class_weight": "class_weight"}


# -- parsing the search ------------------------------------------------------------------------


def _defaults(head: str) -> dict[str, Any]:
    sig = inspect.signature(head_class(head).__init__)
    return {n: p.default for n, p in sig.parameters.items() if n != "self"}


def param_type(head: str, name: str):
    """The type a sweep parses values of option ``name`` to: int, float, bool, or "class_weight"."""
    defaults = _defaults(head)
    if name not in defaults:
        raise HeadError(f"Head {head!r} takes no option {name!r}. It takes: {', '.join(head_params(head))}.")
    if name in _TYPES:
        return _TYPES[name]
    d = defaults[name]
    if isinstance(d, bool):
        return bool
    if isinstance(d, int) or name == "random_state":
        return int
    if isinstance(d, float):
        return float
    raise HeadError(f"Expected an option with one number per trial. Received: {name!r}, which a sweep cannot vary.")


def parse_value(head: str, name: str, text: str) -> Any:
    kind = param_type(head, name)
    text = text.strip()
    try:
        if kind == "class_weight":
            if text not in ("none", "balanced"):
                raise ValueError
            return None if text == "none" else "balanced"
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        what = {int: "integers", float: "numbers", bool: "true or false", "class_weight": "none or balanced"}[kind]
        raise HeadError(f"Expected {name} values as {what}. Received: {text!r}.") from None


def _name_and_rest(item: str, option: str) -> tuple[str, str]:
    name, sep, rest = item.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise HeadError(f"Expected {option} NAME=... (e.g. {option} learning_rate=1e-3,3e-4). Received: {item!r}.")
    return name.strip(), rest


def parse_grid(head: str, items: Sequence[str]) -> dict[str, list[Any]]:
    """``["hidden_units=128,256", "dropout=0.2"]`` → ``{"hidden_units": [128, 256], "dropout": [0.2]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, rest = _name_and_rest(item, "--grid")
        if name in grid:
            raise HeadError(f"Expected each option once in --grid. Received: {name} twice.")
        values = [parse_value(head, name, v) for v in rest.split(",") if v.strip()]
        grid[name] = list(dict.fromkeys(values))
    return grid


def parse_ranges(head: str, items: Sequence[str]) -> dict[str, tuple[float, float, bool]]:
    """``["learning_rate=1e-4:1e-2:log"]`` → ``{"learning_rate": (1e-4, 1e-2, True)}``."""
    ranges = {}
    for item in items:
        name, rest = _name_and_rest(item, "--range")
        parts = rest.split(":")
        log_scale = len(parts) == 3 and parts[2].strip() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log_scale):
            raise HeadError(f"Expected --range NAME=LOW:HIGH or NAME=LOW:HIGH:log. Received: {item!r}.")
        kind = param_type(head, name)
        if kind not in (int, float):
            raise HeadError(f"Expected a numeric option for --range. Received: {name!r}; use --grid for it.")
        lo, hi = (parse_value(head, name, p) for p in parts[:2])
        if not lo < hi or (log_scale and lo <= 0):
            raise HeadError(
                f"Expected LOW < HIGH{' and LOW > 0 (log)' if log_scale else ''} in --range. Received: {item!r}."
            )
        ranges[name] = (lo, hi, log_scale)
    return ranges


def grid_settings(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def random_settings(
    head: str, grid: Mapping[str, Sequence[Any]], ranges: Mapping[str, tuple[float, float, bool]], n: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` distinct settings: a value of each ``grid`` list, a draw from each range (log-uniform
    where marked; integer options rounded). With neither, the head's `DEFAULT_SPACE`."""
    if not grid and not ranges:
        ranges = DEFAULT_SPACE[head]
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for _ in range(50 * n):
        s = {name: values[int(rng.integers(len(values)))] for name, values in grid.items()}
        for name, (lo, hi, log_scale) in ranges.items():
            v = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log_scale else float(rng.uniform(lo, hi))
            s[name] = int(round(v)) if param_type(head, name) is int else float(f"{v:.4g}")
        key = json.dumps(s, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(s)
        if len(out) == n:
            break
    return out
