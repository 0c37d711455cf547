"""Extraction options to a checked `ExtractionConfig`: `make_config`, defaults per machine (precision)."""

from __future__ import annotations

import logging

from headstart.errors import BackboneError
from headstart.settings.backbones import BACKBONES, get_backbone, get_layer
from headstart.settings.config import IMAGENET, RANDOM_WEIGHTS, ExtractionConfig

log = logging.getLogger(__name__)


def _check_resampler(resampler: str) -> str:
    from headstart.settings.config import RESAMPLERS

    if resampler not in RESAMPLERS:
        raise BackboneError(f"Expected --resampler among {', '.join(RESAMPLERS)}. Received: {resampler!r}.")
    return resampler


def _check_decoder(decoder: str, jpeg_draft: bool) -> str:
    from headstart.extractor import fastjpeg
    from headstart.settings.config import DECODERS

    if decoder not in DECODERS:
        raise BackboneError(f"Expected --decoder among {', '.join(DECODERS)}. Received: {decoder!r}.")
    if decoder == "simplejpeg":
        if jpeg_draft:
            raise BackboneError(
                "Expected --decoder pillow with --draft (draft mode is Pillow's). Received: --decoder simplejpeg."
            )
        fastjpeg.require()
    return decoder


def make_hub_config(
    backbone: str,
    layer: str | None,
    *,
    weights: str,
    input_size: int | None,
    resize: str,
    jpeg_draft: bool,
    precision: str,
    dtype: str,
    seed: int,
    views: str = "none",
    resampler: str = "float32",
    decoder: str = "pillow",
) -> ExtractionConfig:
    """`make_config` for ``hub:PRESET`` (see `headstart.settings.hub`)."""
    from pathlib import Path

    import keras

    from headstart.settings import hub
    from headstart.settings.config import PRECISIONS, RESIZE_METHODS, STORAGE_DTYPES, VIEWS

    if views not in VIEWS:
        raise BackboneError(f"Expected --views among {', '.join(VIEWS)}. Received: {views!r}.")
    _, family, handle = hub.preset_of(backbone)
    if layer not in (None, family.layer):
        raise BackboneError(f"Expected a layer of {backbone} among {family.layer}. Received: {layer!r}.")
    if weights.lower() == IMAGENET:
        identity, folder, seed_used = handle, None, None
    elif weights.lower() == RANDOM_WEIGHTS:
        identity, folder, seed_used = RANDOM_WEIGHTS, None, seed
    else:
        path = Path(weights).expanduser()
        if not path.is_dir():
            raise BackboneError(
                f"Expected --weights imagenet (the preset's), none, or a KerasHub preset folder for {backbone}. "
                f"Received: {weights} (no such folder)."
            )
        identity, folder, seed_used = hub.folder_digest(path), str(path.resolve()), None
    size = hub.image_size(family, hub.read_config(family, handle, folder))
    if input_size not in (None, size):
        raise BackboneError(f"Expected --input-size {size} for {backbone} (the preset's). Received: {input_size}.")
    if resize not in RESIZE_METHODS:
        raise BackboneError(f"Expected --resize among {', '.join(RESIZE_METHODS)}. Received: {resize!r}.")
    precision = default_precision(None) if precision == "auto" else precision
    if precision not in PRECISIONS:
        raise BackboneError(f"Expected --precision among auto, {', '.join(PRECISIONS)}. Received: {precision!r}.")
    if dtype not in STORAGE_DTYPES:
        raise BackboneError(f"Expected --dtype among {', '.join(STORAGE_DTYPES)}. Received: {dtype!r}.")
    return ExtractionConfig(
        backbone=backbone,
        layer=family.layer,
        pooling=None,
        alpha=None,
        weights=identity,
        seed=seed_used,
        keras_version=keras.__version__,
        input_size=size,
        resize=resize,
        jpeg_draft=jpeg_draft,
        preprocessing=family.preprocessing,
        precision=precision,
        dtype=dtype,
        backend=keras.backend.backend(),
        views=views,
        resampler=_check_resampler(resampler),
        decoder=_check_decoder(decoder, jpeg_draft),
        weights_path=folder,
    )


def has_accelerator() -> bool:
    """Whether the Keras backend sees a GPU."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
        if backend == "jax":
            import jax

            return jax.default_backend() == "gpu"
    except Exception:  # pragma: no cover - a broken GPU stack falls back to CPU numbers
        pass
    return False


def cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); Linux only."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_precision(backbone: str | None = None) -> str:
    """float16 on a GPU. On a CPU, bfloat16 for backbones where it was measured to pay
    (VGG16: 1.95x the pictures/s, features' cosine 0.9996 to float32) when the CPU has native
    bfloat16 and the backend is TensorFlow; float32 otherwise (MobileNet ran 0.87x in bfloat16)."""
    import keras

    if has_accelerator():
        return "float16"
    spec = BACKBONES.get(backbone or "")
    if spec is not None and spec.cpu_bfloat16 and keras.backend.backend() == "tensorflow" and cpu_has_bfloat16():
        return "bfloat16"
    return "float32"


def make_config(
    backbone: str = "vgg16",
    layer: str | None = None,
    *,
    weights: str = IMAGENET,
    alpha: float | None = None,
    input_size: int | None = None,
    resize: str = "squash",
    jpeg_draft: bool = False,
    precision: str = "auto",
    dtype: str = "float16",
    seed: int = 0,
    views: str = "none",
    resampler: str = "float32",
    decoder: str = "pillow",
) -> ExtractionConfig:
    """Check the user's options and resolve defaults into an `ExtractionConfig`."""
    import keras

    from headstart.settings import hub

    if hub.is_hub(backbone):
        if alpha is not None:
            raise BackboneError(f"Expected no --alpha for {backbone} (only mobilenet has one). Received: {alpha}.")
        return make_hub_config(
            backbone,
            layer,
            weights=weights,
            input_size=input_size,
            resize=resize,
            jpeg_draft=jpeg_draft,
            precision=precision,
            dtype=dtype,
            seed=seed,
            views=views,
            resampler=resampler,
            decoder=decoder,
        )

    from headstart.settings.config import (
        MAX_INPUT_SIZE,
        MIN_INPUT_SIZE,
        PRECISIONS,
        RESIZE_METHODS,
        STORAGE_DTYPES,
        VIEWS,
        resolve_weights,
    )

    spec = get_backbone(backbone)
    layer = layer or spec.default_layer
    get_layer(spec, layer)
    if spec.alphas:
        alpha = 1.0 if alpha is None else float(alpha)
        if alpha not in spec.alphas:
            raise BackboneError(
                f"Expected --alpha among {', '.join(map(str, spec.alphas))} for {spec.name}. Received: {alpha}."
            )
    elif alpha is not None:
        raise BackboneError(f"Expected no --alpha for {spec.name} (only mobilenet has one). Received: {alpha}.")
    if resize not in RESIZE_METHODS:
        raise BackboneError(f"Expected --resize among {', '.join(RESIZE_METHODS)}. Received: {resize!r}.")
    if precision == "auto":
        precision = default_precision(spec.name)
    if precision not in PRECISIONS:
        raise BackboneError(f"Expected --precision among auto, {', '.join(PRECISIONS)}. Received: {precision!r}.")
    if views not in VIEWS:
        raise BackboneError(f"Expected --views among {', '.join(VIEWS)}. Received: {views!r}.")
    if dtype not in STORAGE_DTYPES:
        raise BackboneError(f"Expected --dtype among {', '.join(STORAGE_DTYPES)}. Received: {dtype!r}.")
    size = spec.input_size if input_size is None else input_size
    if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise BackboneError(f"Expected --input-size from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}. Received: {size}.")
    if spec.layers[layer].include_top and size != spec.input_size:
        raise BackboneError(
            f"Expected --input-size {spec.input_size} for {spec.name} {layer} (its dense layers fix it). "
            f"Received: {size}."
        )
    if weights.lower() == "bundled" and (spec.name, alpha, size) != ("mobilenet", 0.25, 224):
        raise BackboneError(
            "Expected --backbone mobilenet --alpha 0.25 (input size 224) with --weights bundled: the weights "
            f"shipped with headstart are MobileNet 0.25's. Received: --backbone {spec.name}"
            + (f" --alpha {alpha}" if alpha is not None else "")
            + (f" --input-size {size}" if size != 224 else "")
            + "."
        )
    identity, path, seed_used = resolve_weights(weights, seed)
    return ExtractionConfig(
        backbone=spec.name,
        layer=layer,
        pooling=spec.layers[layer].pooling,
        alpha=alpha,
        weights=identity,
        seed=seed_used,
        keras_version=keras.__version__ if identity == IMAGENET else None,
        input_size=size,
        resize=resize,
        jpeg_draft=jpeg_draft,
        preprocessing=spec.preprocessing,
        precision=precision,
        dtype=dtype,
        backend=keras.backend.backend(),
        views=views,
        resampler=_check_resampler(resampler),
        decoder=_check_decoder(decoder, jpeg_draft),
        weights_path=path,
    )
