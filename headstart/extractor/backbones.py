"""Backbone registry: frozen Keras models cut at a named layer, with their exact preprocessing."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from headstart.errors import BackboneError, WeightsDownloadError
from headstart.extractor.config import IMAGENET, RANDOM_WEIGHTS, ExtractionConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layer:
    """A feature layer: whether it needs the classifier top, and whether to average-pool it.

    ``output``: the feature is the model's own output (ConvNeXt's pooled, layer-normalised last
    stage, whose Keras layer has no stable name) instead of the layer of that name."""

    include_top: bool = False
    pooling: str | None = None
    output: bool = False


@dataclass(frozen=True)
class Backbone:
    """How to build one family of models; ``make(include_top, weights, config)`` returns a Keras model."""

    name: str
    make: Callable
    layers: dict[str, Layer]
    default_layer: str
    preprocessing: str
    input_size: int = 224
    weights_file: Callable[[ExtractionConfig, bool], str] = lambda config, top: "?"
    alphas: tuple[float, ...] = field(default=())
    cpu_bfloat16: bool = False  # bfloat16 measured faster than float32 on a CPU with native bfloat16


def _vgg16(include_top: bool, weights, config: ExtractionConfig):
    import keras

    size = config.input_size
    return keras.applications.VGG16(include_top=include_top, weights=weights, input_shape=(size, size, 3))


def _vgg16_file(config: ExtractionConfig, top: bool) -> str:
    return "vgg16_weights_tf_dim_ordering_tf_kernels" + ("" if top else "_notop") + ".h5"


def _mobilenet(include_top: bool, weights, config: ExtractionConfig):
    import keras

    size = config.input_size
    return keras.applications.MobileNet(
        input_shape=(size, size, 3), alpha=config.alpha, include_top=include_top, weights=weights
    )


def _mobilenet_file(config: ExtractionConfig, top: bool) -> str:
    alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(config.alpha, str(config.alpha))
    return f"mobilenet_{alpha}_{config.input_size}_tf{'' if top else '_no_top'}.h5"


def _application(model: str, **kwargs) -> Callable:
    """``make`` for a `keras.applications` model cut at its pooled last stage (no top)."""

    def make(include_top: bool, weights, config: ExtractionConfig):
        import keras

        size = config.input_size
        return getattr(keras.applications, model)(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg", **kwargs
        )

    return make


def _named_file(name: str) -> Callable[[ExtractionConfig, bool], str]:
    return lambda config, top: name


def _tiny(include_top: bool, weights, config: ExtractionConfig):
    """A few-thousand-parameter conv net for tests and smoke runs; random weights only."""
    import keras
    from keras import layers

    if weights not in (None,):
        raise BackboneError("Expected --weights none for the tiny test backbone. Received: a weights file.")
    size = config.input_size
    inputs = keras.Input((size, size, 3), name="input")
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(32, activation="relu", name="embed")(x)
    return keras.Model(inputs, x, name="tiny")


def _vgg16_preprocess(x: np.ndarray) -> np.ndarray:
    import keras

    return keras.applications.vgg16.preprocess_input(x)


def _mobilenet_preprocess(x: np.ndarray) -> np.ndarray:
    import keras

    return keras.applications.mobilenet.preprocess_input(x)


def _resnet50_preprocess(x: np.ndarray) -> np.ndarray:
    import keras

    return keras.applications.resnet50.preprocess_input(x)


def _in_model(x: np.ndarray) -> np.ndarray:
    """Identity: the backbone rescales 0-255 pixels itself (EfficientNetV2, ConvNeXt, MobileNetV3)."""
    return x


IN_MODEL = "in_model"


def _normalise(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """(pixels / 255 - mean) / std per channel, the published values of a KerasHub family."""

    def preprocess(x: np.ndarray) -> np.ndarray:
        from headstart.extractor.hub import NORMALISATION

        mean, std = (np.asarray(v, np.float32) for v in NORMALISATION[name])
        x /= np.float32(255.0)
        x -= mean
        x /= std
        return x

    preprocess.__name__ = f"normalise_{name}"
    return preprocess


PREPROCESSING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "keras.applications.vgg16.preprocess_input": _vgg16_preprocess,
    "keras.applications.mobilenet.preprocess_input": _mobilenet_preprocess,
    "keras.applications.resnet50.preprocess_input": _resnet50_preprocess,
    IN_MODEL: _in_model,
    # KerasHub families (headstart.extractor.hub): published mean and std on pixels / 255.
    "imagenet_mean_std": _normalise("imagenet_mean_std"),
    "clip_mean_std": _normalise("clip_mean_std"),
    "scale_minus1_1": _normalise("scale_minus1_1"),
}
"""Every preprocessing a cache may name, keyed by the string its fingerprint holds (the Keras name,
so caches keep their fingerprints). A new backbone adds one line here and names its key below."""


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        name="vgg16",
        make=_vgg16,
        layers={
            "fc2": Layer(include_top=True),
            "fc1": Layer(include_top=True),
            "block5_pool": Layer(pooling="avg"),
        },
        default_layer="fc2",
        preprocessing="keras.applications.vgg16.preprocess_input",
        weights_file=_vgg16_file,
        cpu_bfloat16=True,
    ),
    "mobilenet": Backbone(
        name="mobilenet",
        make=_mobilenet,
        layers={"conv_pw_13_relu": Layer(pooling="avg")},
        default_layer="conv_pw_13_relu",
        preprocessing="keras.applications.mobilenet.preprocess_input",
        weights_file=_mobilenet_file,
        alphas=(0.25, 0.5, 0.75, 1.0),
    ),
    "resnet50": Backbone(
        name="resnet50",
        make=_application("ResNet50"),
        layers={"avg_pool": Layer(pooling="avg")},
        default_layer="avg_pool",
        preprocessing="keras.applications.resnet50.preprocess_input",
        weights_file=_named_file("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ),
    "efficientnetv2_b0": Backbone(
        name="efficientnetv2_b0",
        make=_application("EfficientNetV2B0"),
        layers={"avg_pool": Layer(pooling="avg")},
        default_layer="avg_pool",
        preprocessing=IN_MODEL,
        weights_file=_named_file("efficientnetv2-b0_notop.h5"),
    ),
    "efficientnetv2_s": Backbone(
        name="efficientnetv2_s",
        make=_application("EfficientNetV2S"),
        layers={"avg_pool": Layer(pooling="avg")},
        default_layer="avg_pool",
        preprocessing=IN_MODEL,
        input_size=384,
        weights_file=_named_file("efficientnetv2-s_notop.h5"),
    ),
    "convnext_tiny": Backbone(
        name="convnext_tiny",
        make=_application("ConvNeXtTiny"),
        layers={"head_layernorm": Layer(pooling="avg", output=True)},
        default_layer="head_layernorm",
        preprocessing=IN_MODEL,
        weights_file=_named_file("convnext_tiny_notop.h5"),
    ),
    "mobilenetv3_large": Backbone(
        name="mobilenetv3_large",
        make=_application("MobileNetV3Large"),
        layers={"avg_pool": Layer(pooling="avg")},
        default_layer="avg_pool",
        preprocessing=IN_MODEL,
        weights_file=_named_file("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    ),
    "tiny": Backbone(
        name="tiny",
        make=_tiny,
        layers={"embed": Layer(), "pool": Layer()},
        default_layer="embed",
        preprocessing="keras.applications.mobilenet.preprocess_input",
        input_size=32,
    ),
}


def get_layer(spec: Backbone, name: str) -> Layer:
    """The feature layer ``name`` of a backbone, or a `BackboneError` listing the ones it has."""
    try:
        return spec.layers[name]
    except KeyError:
        raise BackboneError(
            f"Expected a layer of {spec.name} among {', '.join(spec.layers)}. Received: {name!r}."
        ) from None


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"Expected a backbone among {', '.join(BACKBONES)}. Received: {name!r}.") from None


def preprocess_function(config: ExtractionConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The preprocessing registered under the config's name (e.g. ``keras.applications.vgg16.preprocess_input``).

    The name selects from `PREPROCESSING`; it never names code to import (it comes from files).
    """
    return get_preprocessing(config.preprocessing)


def get_preprocessing(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function registered as ``name`` in `PREPROCESSING`, or a `BackboneError` listing the known ones."""
    try:
        return PREPROCESSING[name]
    except (KeyError, TypeError):
        raise BackboneError(f"Expected a preprocessing among {', '.join(PREPROCESSING)}. Received: {name!r}.") from None


@contextlib.contextmanager
def _dtype_policy(precision: str):
    import keras

    before = keras.config.dtype_policy()
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[precision]
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _looks_like_download_failure(err: Exception) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return any(
        s in text
        for s in (
            "url fetch failure",
            "urlopen",
            "name or service",
            "temporary failure",
            "connection",
            "network is unreachable",
            "http error",
            "timed out",
        )
    )


def build_model(config: ExtractionConfig):
    """A frozen Keras model from pictures (after preprocessing) to the config's feature vector."""
    import keras

    from headstart.extractor import hub

    if hub.is_hub(config.backbone):
        return _build_hub(config)
    spec = get_backbone(config.backbone)
    layer = get_layer(spec, config.layer)
    if config.weights == IMAGENET:
        weights = "imagenet"
    elif config.weights == RANDOM_WEIGHTS:
        weights = None
        keras.utils.set_random_seed(config.seed or 0)
    else:
        weights = config.weights_path
        if weights is None:
            raise BackboneError(
                f"Expected the weights file with {config.weights} for this cache. Received: no --weights PATH."
            )
    with _dtype_policy(config.precision):
        try:
            base = spec.make(layer.include_top, weights, config)
        except BackboneError:
            raise
        except Exception as err:  # Keras raises plain Exception/ValueError for both cases.
            if weights == "imagenet" and _looks_like_download_failure(err):
                fname = spec.weights_file(config, layer.include_top)
                raise WeightsDownloadError(
                    f"Could not download the ImageNet weights of {spec.name} ({fname}): {str(err).splitlines()[0]}. "
                    f"Download {fname} where there is network (Keras keeps it in ~/.keras/models/) "
                    f"and pass it with --weights PATH; or, offline, use the weights shipped with headstart: "
                    f"--backbone mobilenet --alpha 0.25 --weights bundled."
                ) from None
            raise BackboneError(
                f"Could not build {spec.name} with weights {config.weights_path or weights}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}."
            ) from None
        out = base.outputs[0] if layer.output else base.get_layer(config.layer).output
        if config.pooling == "avg" and len(out.shape) == 4:
            out = keras.layers.GlobalAveragePooling2D(name="feature_pool")(out)
        out = keras.layers.Activation("linear", dtype="float32", name="features")(out)
    model = keras.Model(base.inputs[0], out, name=f"{spec.name}_{config.layer}")
    model.trainable = False
    log.info(
        "built %s up to %s (%d values), weights %s, precision %s",
        spec.name,
        config.layer,
        model.output_shape[-1],
        config.weights,
        config.precision,
    )
    return model


def _build_hub(config: ExtractionConfig):
    import keras

    from headstart.extractor import hub

    _, family, handle = hub.preset_of(config.backbone)
    if config.weights.startswith("sha256:") and config.weights_path is None:
        raise BackboneError(
            f"Expected the preset folder with {config.weights} for this cache. Received: no --weights FOLDER."
        )
    if config.weights == RANDOM_WEIGHTS:
        keras.utils.set_random_seed(config.seed or 0)
    folder = config.weights_path if config.weights.startswith("sha256:") else None
    with _dtype_policy(config.precision):
        base = hub.build(family, handle, folder, config.weights != RANDOM_WEIGHTS, config.input_size)
        out = keras.layers.Activation("linear", dtype="float32", name="features")(base.outputs[0])
    model = keras.Model(base.inputs[0], out, name=base.name)
    model.trainable = False
    log.info(
        "built %s (%s, %d values), weights %s", config.backbone, config.layer, model.output_shape[-1], config.weights
    )
    return model


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
) -> ExtractionConfig:
    """`make_config` for ``hub:PRESET`` (see `headstart.extractor.hub`)."""
    from pathlib import Path

    import keras

    from headstart.extractor import hub
    from headstart.extractor.config import PRECISIONS, STORAGE_DTYPES, VIEWS
    from headstart.extractor.decode import RESIZE_METHODS

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
    jpeg_draft: bool = True,
    precision: str = "auto",
    dtype: str = "float16",
    seed: int = 0,
    views: str = "none",
) -> ExtractionConfig:
    """Check the user's options and resolve defaults into an `ExtractionConfig`."""
    import keras

    from headstart.extractor import hub

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
        )

    from headstart.extractor.config import (
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
        weights_path=path,
    )


SPEEDS_FILE = "backbone_speeds.json"
"""Per-backbone figures measured once by ``bench/bench_backbones.py --write-package-data``."""


def describe_backbones() -> tuple[list[dict], str | None]:
    """One row per registered backbone (name, layers, default layer, input size, preprocessing,
    and, where the benchmark measured them, feature size, weights MB and pictures/s), and the
    machine the figures come from. Nothing is measured here."""
    import json
    from importlib import resources

    try:
        data = json.loads(resources.files("headstart.extractor").joinpath(SPEEDS_FILE).read_text())
        measured, machine = data["backbones"], data.get("measured_on")
    except (OSError, ValueError, KeyError, TypeError):
        measured, machine = {}, None
    rows = []
    for spec in BACKBONES.values():
        m = measured.get(spec.name, {}) if isinstance(measured, dict) else {}
        rows.append(
            {
                "name": spec.name,
                "layers": list(spec.layers),
                "default_layer": spec.default_layer,
                "input_size": spec.input_size,
                "preprocessing": spec.preprocessing,
                "features": m.get("features"),
                "weights_mb": m.get("weights_mb"),
                "pictures_per_second": m.get("pictures_per_second"),
            }
        )
    return rows, machine
