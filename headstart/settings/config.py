"""Extraction settings: one frozen dataclass whose canonical JSON is the cache fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.cache import h5safety
from headstart.cache.fingerprint import canonical_json, fingerprint_digest, fingerprint_problem
from headstart.errors import BackboneError

PRECISIONS = ("float32", "bfloat16", "float16")
RESIZE_METHODS = ("squash", "crop")
RESAMPLERS = ("float32", "pillow-uint8")
"""How pictures are resized (`headstart.extractor.decode`): ``float32``, bilinear antialiased on
float pixels as ``keras.layers.Resizing(antialias=True)`` computes it (the exported model
reproduces it); ``pillow-uint8``, Pillow on 8-bit pixels, rounded (caches made before, whose
fingerprint has no ``resampler``)."""
LEGACY_RESAMPLER = "pillow-uint8"
DECODERS = ("pillow", "simplejpeg")
"""Which library decodes a JPEG (`headstart.extractor.decode`): ``pillow``; ``simplejpeg``
(libjpeg-turbo without Pillow's copies, ``pip install headstart[fastjpeg]``) for the JPEGs Pillow
reads as RGB or greyscale, Pillow for every other file. Both give the same pixels on the tested
pictures (`headstart.extractor.fastjpeg`), but two builds of libjpeg-turbo are not promised to, so
the decoder is part of the fingerprint and a cache keeps the one it was made with."""
DEFAULT_DECODER = "pillow"
STORAGE_DTYPES = ("float16", "float32")
POOLINGS = (None, "avg")
BACKENDS = ("tensorflow", "jax", "torch")
RANDOM_WEIGHTS = "none"
IMAGENET = "imagenet"
BUNDLED = "bundled"
"""``--weights bundled``: MobileNet 0.25's ImageNet weights (224 px, no top), shipped in headstart/data."""
BUNDLED_FILE = "mobilenet_2_5_224_tf_no_top.h5"
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 4096
_WEIGHTS_FILE = re.compile(r"sha256:[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,39}")
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
    jpeg_draft: bool = False
    preprocessing: str = "keras.applications.vgg16.preprocess_input"
    precision: str = "float32"
    dtype: str = "float16"
    backend: str = "tensorflow"
    views: str = "none"
    resampler: str = "float32"
    decoder: str = DEFAULT_DECODER
    weights_path: str | None = field(default=None, compare=False)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the numbers, as a plain dict (``weights_path`` left out)."""
        out = dataclasses.asdict(self)
        out.pop("weights_path")
        if out["views"] == "none":  # caches made before views existed keep their fingerprint
            out.pop("views")
        if out["resampler"] == LEGACY_RESAMPLER:  # and so do caches made before the resampler was
            out.pop("resampler")
        if out["decoder"] == DEFAULT_DECODER:  # and caches decoded by Pillow, the only decoder before
            out.pop("decoder")
        return out

    def fingerprint_json(self) -> str:
        return canonical_json(self.fingerprint())

    def digest(self) -> str:
        return fingerprint_digest(self.fingerprint())

    @classmethod
    def from_fingerprint(cls, fingerprint: Any, weights_path: str | None = None) -> ExtractionConfig:
        """Rebuild the config a cache was made with (e.g. to embed new pictures the same way).

        The fingerprint comes from a file: every key and type is checked, and every name is looked
        up in its registry (backbone, layer, pooling, preprocessing, resize, precision, dtype,
        backend, weights); anything else is a `BackboneError` naming the allowed values.
        """
        problem = fingerprint_problem(fingerprint)
        if problem:
            raise BackboneError(f"Expected a fingerprint of this headstart version. Received: {problem}.")
        check_settings(fingerprint)
        return cls(**{"resampler": LEGACY_RESAMPLER, **fingerprint}, weights_path=weights_path)


def config_of(cache) -> ExtractionConfig:
    """The extraction settings of an open cache (`headstart.cache.CacheReader`), every value checked
    against the registries; a `CacheError` naming the file if this version does not know one."""
    from headstart.errors import CacheError

    try:
        return ExtractionConfig.from_fingerprint(cache.fingerprint, weights_path=cache.weights_path)
    except BackboneError as err:
        raise CacheError(f"{cache.path} holds settings this version of headstart does not know. {err}") from None


def _one_of(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise BackboneError(f"Expected {name} among {shown}. Received: {value!r:.80}.")


def check_settings(fp: dict[str, Any]) -> None:
    """Check the values of a fingerprint whose keys and types are right against the registries."""
    from headstart.settings import hub
    from headstart.settings.backbones import BACKBONES, PREPROCESSING

    if hub.is_hub(fp["backbone"]):
        _check_hub(fp)
        return
    _one_of("backbone", fp["backbone"], BACKBONES)
    spec = BACKBONES[fp["backbone"]]
    _one_of(f"a layer of {spec.name}", fp["layer"], spec.layers)
    layer = spec.layers[fp["layer"]]
    _one_of("pooling", fp["pooling"], POOLINGS)
    if fp["pooling"] != layer.pooling:
        raise BackboneError(
            f"Expected pooling {layer.pooling!r} for {spec.name} {fp['layer']}. Received: {fp['pooling']!r}."
        )
    _one_of("preprocessing", fp["preprocessing"], PREPROCESSING)
    if fp["preprocessing"] != spec.preprocessing:
        raise BackboneError(
            f"Expected preprocessing {spec.preprocessing} for {spec.name}. Received: {fp['preprocessing']}."
        )
    _one_of(f"alpha of {spec.name}", fp["alpha"], spec.alphas or (None,))
    weights = fp["weights"]
    if weights not in (IMAGENET, RANDOM_WEIGHTS) and not _WEIGHTS_FILE.fullmatch(weights):
        raise BackboneError(
            f"Expected weights among imagenet, none, sha256:<64 hex digits>. Received: {weights!r:.80}."
        )
    if (fp["seed"] is None) != (weights != RANDOM_WEIGHTS):
        raise BackboneError(
            f"Expected a seed with weights none only. Received: seed {fp['seed']!r}, weights {weights}."
        )
    if fp["keras_version"] is not None and not _VERSION.fullmatch(fp["keras_version"]):
        raise BackboneError(f"Expected keras_version like 3.8.0. Received: {fp['keras_version']!r:.80}.")
    size = fp["input_size"]
    if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise BackboneError(f"Expected input_size from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}. Received: {size}.")
    if layer.include_top and size != spec.input_size:
        raise BackboneError(f"Expected input_size {spec.input_size} for {spec.name} {fp['layer']}. Received: {size}.")
    _one_of("resize", fp["resize"], RESIZE_METHODS)
    _one_of("precision", fp["precision"], PRECISIONS)
    _one_of("dtype", fp["dtype"], STORAGE_DTYPES)
    _one_of("backend", fp["backend"], BACKENDS)
    _one_of("views", fp.get("views", "none"), VIEWS)
    _one_of("resampler", fp.get("resampler", LEGACY_RESAMPLER), RESAMPLERS)
    _one_of("decoder", fp.get("decoder", DEFAULT_DECODER), DECODERS)


def _check_hub(fp: dict[str, Any]) -> None:
    """`check_settings` for a KerasHub backbone: names from the hub families, a Kaggle handle with its
    version, none, or the SHA-256 of a preset folder (no KerasHub needed to check)."""
    from headstart.settings import hub

    hub.check_name(fp["backbone"], fp["layer"], fp["preprocessing"])
    _one_of("pooling", fp["pooling"], (None,))
    _one_of("alpha", fp["alpha"], (None,))
    weights = fp["weights"]
    if weights != RANDOM_WEIGHTS and not _WEIGHTS_FILE.fullmatch(weights) and not hub.HANDLE.fullmatch(weights):
        raise BackboneError(
            f"Expected weights among none, sha256:<64 hex digits>, kaggle://.../VERSION. Received: {weights!r:.80}."
        )
    if (fp["seed"] is None) != (weights != RANDOM_WEIGHTS):
        raise BackboneError(
            f"Expected a seed with weights none only. Received: seed {fp['seed']!r}, weights {weights}."
        )
    if fp["keras_version"] is not None and not _VERSION.fullmatch(fp["keras_version"]):
        raise BackboneError(f"Expected keras_version like 3.8.0. Received: {fp['keras_version']!r:.80}.")
    if not MIN_INPUT_SIZE <= fp["input_size"] <= MAX_INPUT_SIZE:
        raise BackboneError(
            f"Expected input_size from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}. Received: {fp['input_size']}."
        )
    _one_of("resize", fp["resize"], RESIZE_METHODS)
    _one_of("precision", fp["precision"], PRECISIONS)
    _one_of("dtype", fp["dtype"], STORAGE_DTYPES)
    _one_of("backend", fp["backend"], BACKENDS)
    _one_of("resampler", fp.get("resampler", LEGACY_RESAMPLER), RESAMPLERS)
    _one_of("decoder", fp.get("decoder", DEFAULT_DECODER), DECODERS)


def bundled_weights() -> Path:
    """The file behind ``--weights bundled``: MobileNet 0.25's ImageNet weights, inside the package."""
    from importlib import resources

    path = Path(str(resources.files("headstart") / "data" / BUNDLED_FILE))
    if not path.is_file():
        raise BackboneError(
            f"Expected the bundled weights {BUNDLED_FILE} in {path.parent}. Received: no such file; "
            "reinstall headstart from its folder (pip install --force-reinstall -e .)."
        )
    return path


def resolve_weights(weights: str, seed: int) -> tuple[str, str | None, int | None]:
    """Turn the ``--weights`` option into (identity, local path, seed); ``bundled`` is the shipped file."""
    if weights.lower() == IMAGENET:
        return IMAGENET, None, None
    if weights.lower() == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS, None, seed
    path = bundled_weights() if weights.lower() == BUNDLED else Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"Expected --weights imagenet, none, bundled, or a weights file (.h5 / .weights.h5). "
            f"Received: {weights} (no such file)."
        )
    problem = h5safety.file_problem(path)  # Keras would follow it when it loads the weights
    if problem:
        raise BackboneError(f"Expected a weights file that keeps its data in itself. Received: {weights} ({problem}).")
    return f"sha256:{file_sha256(path)}", str(path.resolve()), None


def check_cache_settings(*paths) -> None:
    """Open each cache and check its settings against this version's registries (`config_of`).

    For what reads features but builds no model (`train`, `compare`, `sweep`; `audit` and `map`
    check through `headstart.audit.reading.open_checked`; the CLI's `merge`): a cache whose
    fingerprint names a backbone, preprocessing or layer that headstart does not know is refused
    as `info` and `predict` refuse it, before any work. A missing file is left to the caller,
    which says so in its own words."""
    from pathlib import Path

    from headstart.cache import open_cache

    for path in paths:
        if Path(path).is_file():
            with open_cache(path) as cache:
                config_of(cache)
