"""Fingerprint of a cache: the canonical JSON of every setting that changes the numbers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(settings: Mapping[str, Any]) -> str:
    """Serialize settings the same way on every machine: sorted keys, no spaces."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_digest(settings: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON, for file names and quick comparisons."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def diff_settings(expected: Mapping[str, Any], received: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ, as ``{name: (expected, received)}``; a missing key reads as None."""
    keys = sorted(set(expected) | set(received))
    return {k: (expected.get(k), received.get(k)) for k in keys if expected.get(k) != received.get(k)}


def describe_diff(diff: Mapping[str, tuple[Any, Any]], labels: tuple[str, str] = ("cache", "now")) -> str:
    """One line naming each differing setting: ``layer: 'fc2' (cache) vs 'fc1' (now)``."""
    first, second = labels
    return "; ".join(f"{k}: {a!r} ({first}) vs {b!r} ({second})" for k, (a, b) in diff.items())


FINGERPRINT_TYPES: dict[str, tuple[type, ...]] = {
    "backbone": (str,),
    "layer": (str,),
    "pooling": (str, type(None)),
    "alpha": (float, type(None)),
    "weights": (str,),
    "seed": (int, type(None)),
    "keras_version": (str, type(None)),
    "input_size": (int,),
    "resize": (str,),
    "jpeg_draft": (bool,),
    "preprocessing": (str,),
    "precision": (str,),
    "dtype": (str,),
    "backend": (str,),
}
"""Every key of a cache fingerprint and the JSON types its value may have (the fields of
`headstart.settings.config.ExtractionConfig`; a test keeps the two in step). Values are checked
against the extractor's registries by ``ExtractionConfig.from_fingerprint``."""


OPTIONAL_FINGERPRINT_TYPES: dict[str, tuple[type, ...]] = {"views": (str,), "resampler": (str,), "decoder": (str,)}
"""Keys a fingerprint has only when not at their old default (``views`` when not ``none``;
``resampler`` when not ``pillow-uint8``, the resize of caches made before it was recorded;
``decoder`` when not ``pillow``), so that caches made before the setting existed keep their fingerprint."""


_JSON_NAMES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _type_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _expected_name(types: tuple[type, ...]) -> str:
    return " or ".join(_JSON_NAMES[t] for t in types)


def fingerprint_problem(fingerprint: Any) -> str | None:
    """What is wrong with the keys and value types of a fingerprint, in a few words; None if nothing.

    Only the form is checked here (the cache must not depend on the extractor); which backbones,
    layers or preprocessings exist is the extractor's business.
    """
    if not isinstance(fingerprint, dict):
        return f"the fingerprint is of JSON type {_type_name(fingerprint)}, not an object"
    missing = [k for k in FINGERPRINT_TYPES if k not in fingerprint]
    unknown = sorted(str(k) for k in fingerprint if k not in FINGERPRINT_TYPES and k not in OPTIONAL_FINGERPRINT_TYPES)
    if missing:
        return f"the fingerprint lacks the settings {', '.join(missing)}"
    if unknown:
        return f"the fingerprint has unknown settings: {', '.join(unknown)}"
    present = {**FINGERPRINT_TYPES, **{k: t for k, t in OPTIONAL_FINGERPRINT_TYPES.items() if k in fingerprint}}
    for key, types in present.items():
        value = fingerprint[key]
        # bool is an int in Python, not in JSON; an integral alpha (1) would not round-trip as 1.0.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            return f"setting {key} is {value!r:.40} of type {_type_name(value)}, expected {_expected_name(types)}"
    return None
