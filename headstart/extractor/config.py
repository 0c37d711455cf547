"""Extraction settings: one frozen dataclass whose canonical JSON is the cache fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.cache.fingerprint import canonical_json, fingerprint_digest
from headstart.errors import BackboneError

PRECISIONS = ("float32", "bfloat16", "float16")
STORAGE_DTYPES = ("float16", "float32")
RANDOM_WEIGHTS = "none"
IMAGENET = "imagenet"
VIEWS = ("none", "flip")
"""Rows per picture: ``none`` one; ``flip`` two, the picture and its horizontal mirror."""


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """SHA-256 of a file, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExtractionConfig:
    """Every setting that changes the numbers of a feature cache.

    ``weights`` identifies the weights, not where they lie: ``imagenet`` (Keras' download),
    ``none`` (random, seeded by ``seed``) or ``sha256:<hex>`` of a local file. The file's path
    travels beside the config (``weights_path``) and is not part of the fingerprint.
    """

    backbone: str = "vgg16"
    layer: str = "fc2"
    pooling: str | None = None
    alpha: float | None = None
    weights: str = IMAGENET
    seed: int | None = None
    keras_version: str | None = None
    input_size: int = 224
    resize: str = "squash"
    jpeg_draft: bool = True
    preprocessing: str = "keras.applications.vgg16.preprocess_input"
    precision: str = "float32"
    dtype: str = "float16"
    backend: str = "tensorflow"
    views: str = "none"
    weights_path: str | None = field(default=None, compare=False)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the numbers, as a plain dict (``weights_path`` left out)."""
        out = dataclasses.asdict(self)
        out.pop("weights_path")
        if out["views"] == "none":  # caches made before views existed keep their fingerprint
            out.pop("views")
        return out

    def fingerprint_json(self) -> str:
        return canonical_json(self.fingerprint())

    def digest(self) -> str:
        return fingerprint_digest(self.fingerprint())

    @classmethod
    def from_fingerprint(cls, fingerprint: dict[str, Any], weights_path: str | None = None) -> "ExtractionConfig":
        """Rebuild the config a cache was made with (e.g. to embed new pictures the same way)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"weights_path"}
        unknown = sorted(set(fingerprint) - known)
        if unknown:
            raise BackboneError(
                f"Expected a fingerprint of this headstart version. Received unknown settings: {', '.join(unknown)}."
            )
        return cls(**fingerprint, weights_path=weights_path)


def resolve_weights(weights: str, seed: int) -> tuple[str, str | None, int | None]:
    """Turn the ``--weights`` option into (identity, local path, seed)."""
    if weights.lower() == IMAGENET:
        return IMAGENET, None, None
    if weights.lower() == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS, None, seed
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"Expected --weights imagenet, none, or a weights file (.h5 / .weights.h5). "
            f"Received: {weights} (no such file)."
        )
    return f"sha256:{file_sha256(path)}", str(path.resolve()), None
