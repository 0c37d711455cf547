"""The model to ship: one Keras model from RGB pixels to class probabilities (resize, preprocessing, backbone, head).

The model is built only from Keras' own layers, so ``keras.saving.load_model(PATH)`` (safe mode)
reads it in a Python without headstart: ``pixels`` (a batch of RGB 0-255, any height and width,
one size per batch) → ``Resizing`` as the cache was made (squash or centre crop, antialiased
bilinear like Pillow's) → the backbone's preprocessing as layers → the frozen backbone up to the
cached layer and its pooling → the head (standardization included) → one probability per class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from headstart.errors import ExportError
from headstart.extractor.model import build_model
from headstart.settings.config import ExtractionConfig

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"

# caffe mode (`keras.applications.imagenet_utils`, mode="caffe"): RGB -> BGR, ImageNet mean subtracted.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _caffe_layers() -> list:
    """RGB→BGR and the mean subtracted as one fixed ``Dense`` on the channel axis (exact: a
    permutation matrix times the pixels, plus a bias)."""
    import keras

    dense = keras.layers.Dense(3, name="caffe_bgr_minus_mean", trainable=False)
    dense.build((None, None, None, 3))
    kernel = np.zeros((3, 3), np.float32)
    kernel[2, 0] = kernel[1, 1] = kernel[0, 2] = 1.0  # out B <- in B (index 2), G <- G, R <- R
    dense.set_weights([kernel, -np.asarray(_CAFFE_MEAN_BGR, np.float32)])
    return [dense]


def _tf_mode_layers() -> list:
    """tf mode (MobileNet): pixels / 127.5 - 1."""
    import keras

    return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_minus1_1")]


def _normalise_layers(name: str) -> Callable[[], list]:
    """(pixels / 255 - mean) / std as one fixed diagonal ``Dense`` on the channel axis."""

    def make() -> list:
        import keras

        from headstart.settings.hub import NORMALISATION

        mean, std = (np.asarray(v, np.float64) for v in NORMALISATION[name])
        dense = keras.layers.Dense(3, name=f"normalise_{name}", trainable=False)
        dense.build((None, None, None, 3))
        dense.set_weights([np.diag(1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)])
        return [dense]

    return make


def _in_model() -> list:
    """The backbone rescales its input itself (EfficientNetV2, ConvNeXt, MobileNetV3)."""
    return []


PREPROCESSING_LAYERS: dict[str, Callable[[], list]] = {
    "keras.applications.vgg16.preprocess_input": _caffe_layers,
    "keras.applications.resnet50.preprocess_input": _caffe_layers,
    "keras.applications.mobilenet.preprocess_input": _tf_mode_layers,
    "in_model": _in_model,
    "imagenet_mean_std": _normalise_layers("imagenet_mean_std"),
    "clip_mean_std": _normalise_layers("clip_mean_std"),
    "scale_minus1_1": _normalise_layers("scale_minus1_1"),
}
"""The preprocessing of each backbone (by the name the fingerprint records) as Keras layers."""


def preprocessing_layers(name: str) -> list:
    try:
        make = PREPROCESSING_LAYERS[name]
    except KeyError:
        raise ExportError(
            f"Expected a preprocessing among {', '.join(PREPROCESSING_LAYERS)}. Received: {name!r}."
        ) from None
    return make()


SUPERSAMPLE = 4
"""``portable`` resize: bilinear to 4x the input size, then 4x4 averages (antialiasing from ops
that ONNX and LiteRT have; their converters lack TensorFlow's antialiased ``ScaleAndTranslate``)."""


def resize_layers(config: ExtractionConfig, portable: bool = False) -> list:
    """The resize the cache was made with, as Keras layers.

    Pillow's BILINEAR (what `headstart.extractor.decode` uses) filters with a triangle as wide as
    the scale when it shrinks; ``Resizing(antialias=True)`` does the same. ``portable`` gets close
    with plain bilinear resizing and average pooling (see `SUPERSAMPLE`)."""
    import keras

    size, crop = config.input_size, config.resize == "crop"
    if not portable:
        return [
            keras.layers.Resizing(
                size,
                size,
                interpolation="bilinear",
                antialias=True,
                crop_to_aspect_ratio=crop,
                name=f"resize_{config.resize}",
            )
        ]
    k = SUPERSAMPLE
    return [
        keras.layers.Resizing(
            size * k, size * k, interpolation="bilinear", crop_to_aspect_ratio=crop, name=f"resize_{config.resize}_x{k}"
        ),
        keras.layers.AveragePooling2D(k, name=f"average_{k}x{k}"),
    ]


def pixel_model(config: ExtractionConfig, portable: bool = False):
    """A Keras model from RGB pixels 0-255 of any size to the feature rows the cache holds.

    The backbone is built in float32 whatever precision the cache was extracted in (a portable
    file; bfloat16 features were measured at cosine 0.9996 to float32 for VGG16). ``portable``:
    see `resize_layers`."""
    import keras

    backbone = build_model(dataclasses.replace(config, precision="float32"))
    pixels = keras.Input((None, None, 3), dtype="float32", name=INPUT_NAME)
    x = pixels
    for layer in resize_layers(config, portable) + preprocessing_layers(config.preprocessing):
        x = layer(x)
    x = backbone(x)
    model = keras.Model(pixels, x, name="headstart_features")
    model.trainable = False
    return model


def classifier_model(features, head, n_features: int, classes: Sequence[int], n_classes: int):
    """``features`` (pixels → feature rows) followed by ``head`` (feature rows → probabilities
    over ``classes``, indices into the run's class names), widened to all ``n_classes``."""
    import keras

    pixels = features.inputs[0]
    x = features(pixels)
    if x.shape[-1] != n_features:
        raise ExportError(
            f"Expected the backbone to give {n_features} features, as the run's cache. Received: {x.shape[-1]}."
        )
    proba = head(x)
    classes = [int(c) for c in classes]
    if classes != list(range(n_classes)):
        # A head fitted on some of the classes: put its columns where the run's classes are.
        widen = keras.layers.Dense(n_classes, use_bias=False, trainable=False, name="all_classes")
        widen.build((None, len(classes)))
        kernel = np.zeros((len(classes), n_classes), np.float32)
        kernel[np.arange(len(classes)), classes] = 1.0
        widen.set_weights([kernel])
        proba = widen(proba)
    proba = keras.layers.Activation("linear", dtype="float32", name=OUTPUT_NAME)(proba)
    model = keras.Model(pixels, proba, name="headstart_classifier")
    model.trainable = False
    return model
