"""Building the frozen Keras model of an `ExtractionConfig`: the backbone cut at its layer, in its precision."""

from __future__ import annotations

import contextlib
import logging

from headstart.errors import BackboneError, WeightsDownloadError
from headstart.extractor.depthwise import grouped_to_depthwise
from headstart.settings.backbones import get_backbone, get_layer
from headstart.settings.config import IMAGENET, RANDOM_WEIGHTS, ExtractionConfig

log = logging.getLogger(__name__)


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

    from headstart.settings import hub

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
            base = grouped_to_depthwise(spec.make(layer.include_top, weights, config))
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


def preset_folder(config: ExtractionConfig) -> str | None:
    """The KerasHub preset folder of ``config`` (weights ``sha256:...``), None for a downloaded preset."""
    if not config.weights.startswith("sha256:"):
        return None
    if config.weights_path is None:
        raise BackboneError(
            f"Expected the preset folder with {config.weights} for this cache. Received: no --weights FOLDER."
        )
    return config.weights_path


def _build_hub(config: ExtractionConfig):
    import keras

    from headstart.settings import hub

    _, family, handle = hub.preset_of(config.backbone)
    folder = preset_folder(config)
    if config.weights == RANDOM_WEIGHTS:
        keras.utils.set_random_seed(config.seed or 0)
    with _dtype_policy(config.precision):
        base = hub.build(family, handle, folder, config.weights != RANDOM_WEIGHTS, config.input_size)
        out = keras.layers.Activation("linear", dtype="float32", name="features")(base.outputs[0])
    model = keras.Model(base.inputs[0], out, name=base.name)
    model.trainable = False
    log.info(
        "built %s (%s, %d values), weights %s", config.backbone, config.layer, model.output_shape[-1], config.weights
    )
    return model
