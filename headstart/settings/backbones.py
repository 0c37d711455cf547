"""Backbone registry (`BACKBONES`, `PREPROCESSING`): frozen Keras models cut at a named layer, with their exact preprocessing.

A backbone is added here: its maker, its layers, and the preprocessing its fingerprint names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from headstart.errors import BackboneError

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
    weights_file: Callable[..., str] = lambda config, top: "?"
    alphas: tuple[float, ...] = field(default=())
    cpu_bfloat16: bool = False  # bfloat16 measured faster than float32 on a CPU with native bfloat16


def _vgg16(include_top: bool, weights, config):
    import keras

    size = config.input_size
    return keras.applications.VGG16(include_top=include_top, weights=weights, input_shape=(size, size, 3))


def _vgg16_file(config, top: bool) -> str:
    return "vgg16_weights_tf_dim_ordering_tf_kernels" + ("" if top else "_notop") + ".h5"


def _mobilenet(include_top: bool, weights, config):
    import keras

    size = config.input_size
    return keras.applications.MobileNet(
        input_shape=(size, size, 3), alpha=config.alpha, include_top=include_top, weights=weights
    )


def _mobilenet_file(config, top: bool) -> str:
    alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(config.alpha, str(config.alpha))
    return f"mobilenet_{alpha}_{config.input_size}_tf{'' if top else '_no_top'}.h5"


def _application(model: str, **kwargs) -> Callable:
    """``make`` for a `keras.applications` model cut at its pooled last stage (no top)."""

    def make(include_top: bool, weights, config):
        import keras

        size = config.input_size
        return getattr(keras.applications, model)(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg", **kwargs
        )

    return make


def _named_file(name: str) -> Callable[..., str]:
    return lambda config, top: name


def _tiny(include_top: bool, weights, config):
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
        from headstart.settings.hub import NORMALISATION

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
    # KerasHub families (headstart.settings.hub): published mean and std on pixels / 255.
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


def preprocess_function(config) -> Callable[[np.ndarray], np.ndarray]:
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


SPEEDS_FILE = "backbone_speeds.json"
"""Per-backbone figures measured once by ``bench/bench_backbones.py --write-package-data``."""


def _speeds_text() -> str:
    from importlib import resources

    return resources.files("headstart.settings").joinpath(SPEEDS_FILE).read_text()


def describe_backbones() -> tuple[list[dict], str | None]:
    """One row per registered backbone (name, layers, default layer, input size, preprocessing,
    and, where the benchmark measured them, feature size, weights MB, pictures/s of the model alone
    in float32 and bfloat16 and the pipeline / model ratio), and one line saying where and when the
    figures were measured. Nothing is measured here."""
    import json

    try:
        data = json.loads(_speeds_text())
        measured, where = data["backbones"], data["measured_on"]
    except (OSError, ValueError, KeyError, TypeError):
        measured, where = {}, None
    if not isinstance(where, dict) or not isinstance(measured, dict):
        measured, where = {}, None  # figures without a machine and a date are not shown
    rows = []
    for spec in BACKBONES.values():
        m = measured.get(spec.name) if isinstance(measured.get(spec.name), dict) else {}
        fp32 = m.get("float32") if isinstance(m.get("float32"), dict) else {}
        bf16 = m.get("bfloat16") if isinstance(m.get("bfloat16"), dict) else {}
        rows.append(
            {
                "name": spec.name,
                "layers": list(spec.layers),
                "default_layer": spec.default_layer,
                "input_size": spec.input_size,
                "preprocessing": spec.preprocessing,
                "features": m.get("features"),
                "weights_mb": m.get("weights_mb"),
                "pictures_per_second": fp32.get("pictures_per_second"),
                "pictures_per_second_bfloat16": bf16.get("pictures_per_second"),
                "pipeline_ratio": fp32.get("ratio"),
            }
        )
    machine = None
    if where:
        load = where.get("max_load_average")
        machine = (
            f"{where.get('cpu')}, {where.get('cores')} cores, batch {where.get('batch_size')}, "
            f"Keras {where.get('keras')} / {where.get('backend')}, on {where.get('date')}"
            + (f" (load average at most {load:.2f})" if isinstance(load, (int, float)) else "")
        )
    return rows, machine
