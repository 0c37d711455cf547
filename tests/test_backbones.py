"""Backbones: layers and sizes, exact Keras preprocessing, precision, weights errors."""

import keras
import numpy as np
import pytest
from conftest import MOBILENET_WEIGHTS, needs_shared

from headstart.errors import BackboneError, WeightsDownloadError
from headstart.extractor.embed import Embedder
from headstart.extractor.model import build_model
from headstart.extractor.options import make_config
from headstart.settings.backbones import get_backbone
from headstart.settings.config import ExtractionConfig


@pytest.mark.parametrize("layer, dim", [("fc2", 4096), ("block5_pool", 512)])
def test_vgg16_layers(layer, dim):
    config = make_config("vgg16", layer, weights="none", precision="float32")
    model = build_model(config)
    assert model.output_shape == (None, dim)
    assert model.input_shape == (None, 224, 224, 3)
    assert not model.trainable


def test_vgg16_preprocessing_is_exactly_keras_and_not_rescaled():
    config = make_config("vgg16", "block5_pool", weights="none", precision="float32")
    emb = Embedder(config, batch_size=2)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    expected = emb.model.predict_on_batch(keras.applications.vgg16.preprocess_input(pixels.astype(np.float32)))
    np.testing.assert_allclose(emb(list(pixels)), expected, rtol=1e-5, atol=1e-5)
    assert config.preprocessing == "keras.applications.vgg16.preprocess_input"


def test_padded_last_batch_gives_the_same_rows(tiny_config):
    emb = Embedder(tiny_config, batch_size=4)
    pixels = list(np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8))
    full = emb(pixels)
    np.testing.assert_array_equal(emb(pixels[:3]), full[:3])
    assert emb(pixels[:1]).shape == (1, 32)


def test_random_weights_are_seeded():
    a = Embedder(make_config("tiny", weights="none", seed=3), 2)
    b = Embedder(make_config("tiny", weights="none", seed=3), 2)
    c = Embedder(make_config("tiny", weights="none", seed=4), 2)
    x = list(np.full((2, 32, 32, 3), 128, np.uint8))
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.array_equal(a(x), c(x))


def test_bfloat16_policy_outputs_float32_and_restores_the_global_policy():
    before = keras.config.dtype_policy().name
    config = make_config("tiny", weights="none", precision="bfloat16")
    model = build_model(config)
    assert keras.config.dtype_policy().name == before
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    out = Embedder(config, 2)(list(np.zeros((2, 32, 32, 3), np.uint8)))
    assert out.dtype == np.float32


def test_imagenet_download_failure_names_the_file_and_the_way_out(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://example/vgg16_weights.h5: None -- [Errno -3] "
            "Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    config = make_config("vgg16", "block5_pool", weights="imagenet")
    with pytest.raises(WeightsDownloadError) as err:
        build_model(config)
    text = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in text and "--weights PATH" in text
    assert "--backbone mobilenet --alpha 0.25 --weights bundled" in text  # what works offline
    assert config.fingerprint()["keras_version"] == keras.__version__


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": "resnet"}, "among vgg16, mobilenet, resnet50,"),
        ({"backbone": "vgg16", "layer": "fc3"}, "among fc2, fc1, block5_pool"),
        ({"backbone": "vgg16", "alpha": 0.5}, "only mobilenet"),
        ({"backbone": "mobilenet", "alpha": 0.3}, "--alpha among"),
        ({"backbone": "vgg16", "precision": "int8"}, "--precision"),
        ({"backbone": "vgg16", "dtype": "float64"}, "--dtype"),
        ({"backbone": "vgg16", "resize": "stretch"}, "--resize"),
        ({"backbone": "vgg16", "input_size": 320}, "--input-size 224"),
        ({"backbone": "vgg16", "weights": "/no/such/file.h5"}, "no such file"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(BackboneError) as err:
        make_config(**kwargs)
    assert message in str(err.value) and "Expected" in str(err.value)


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "w.h5"
    bad.write_bytes(b"not weights")
    config = make_config("mobilenet", alpha=0.25, weights=str(bad), precision="float32")
    assert config.weights.startswith("sha256:") and config.weights_path == str(bad.resolve())
    assert "weights_path" not in config.fingerprint()
    with pytest.raises(BackboneError, match="Could not build mobilenet"):
        build_model(config)


def test_fingerprint_round_trip():
    config = make_config("tiny", weights="none", precision="float32")
    assert ExtractionConfig.from_fingerprint(config.fingerprint()) == config
    with pytest.raises(BackboneError, match="unknown settings: colour"):
        ExtractionConfig.from_fingerprint({**config.fingerprint(), "colour": "red"})


@needs_shared
def test_mobilenet_with_real_weights():
    config = make_config("mobilenet", alpha=0.25, weights=str(MOBILENET_WEIGHTS), precision="float32")
    model = build_model(config)
    assert model.output_shape == (None, 256)
    assert config.weights == "sha256:dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"


def test_auto_precision_follows_the_measurements(monkeypatch):
    from headstart.extractor import options

    monkeypatch.setattr(options, "has_accelerator", lambda: False)
    monkeypatch.setattr(options, "cpu_has_bfloat16", lambda: True)
    assert make_config("vgg16", weights="none").precision == "bfloat16"
    assert make_config("mobilenet", alpha=0.25, weights="none").precision == "float32"
    monkeypatch.setattr(options, "cpu_has_bfloat16", lambda: False)
    assert make_config("vgg16", weights="none").precision == "float32"
    monkeypatch.setattr(options, "has_accelerator", lambda: True)
    assert make_config("vgg16", weights="none").precision == "float16"
    assert make_config("mobilenet", alpha=0.25, weights="none", precision="float32").precision == "float32"


def test_vgg16_block5_pool_takes_another_input_size():
    config = make_config("vgg16", "block5_pool", weights="none", input_size=64, precision="float32")
    emb = Embedder(config, batch_size=2)
    assert emb.model.input_shape == (None, 64, 64, 3)
    assert emb(list(np.zeros((2, 64, 64, 3), np.uint8))).shape == (2, 512)


@pytest.mark.parametrize(
    "name, dim",
    [
        pytest.param("resnet50", 2048, marks=pytest.mark.slow),
        pytest.param("efficientnetv2_b0", 1280, marks=pytest.mark.slow),
        pytest.param("efficientnetv2_s", 1280, marks=pytest.mark.slow),
        ("convnext_tiny", 768),  # the model's own output, not a named layer
        pytest.param("mobilenetv3_large", 960, marks=pytest.mark.slow),
    ],
)
def test_keras_applications_backbones_give_their_pooled_last_stage(name, dim):
    config = make_config(name, weights="none", input_size=64, precision="float32")
    assert config.pooling == "avg" and config.layer == get_backbone(name).default_layer
    emb = Embedder(config, batch_size=2)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    out = emb(list(pixels))
    assert out.shape == (2, dim) and np.isfinite(out).all()


@pytest.mark.parametrize(
    "name, size",
    [
        pytest.param("resnet50", 224, marks=pytest.mark.slow),
        ("mobilenetv3_large", 224),
        pytest.param("efficientnetv2_s", 384, marks=pytest.mark.slow),
    ],
)
def test_new_backbones_default_input_size_and_offline_message(monkeypatch, name, size):
    """Without network, --weights imagenet names the file Keras wanted and the way out."""
    spec = get_backbone(name)
    config = make_config(name, weights="imagenet", precision="float32")
    assert config.input_size == size
    fname = spec.weights_file(config, False)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    import keras.src.utils.file_utils as file_utils

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsDownloadError) as err:
        build_model(config)
    assert fname in str(err.value) and "--weights PATH" in str(err.value)


# -- preprocessing and fingerprints come from files: names select from registries -------------


def test_preprocessing_registry_keeps_the_fingerprints_of_existing_caches():
    from headstart.settings.backbones import BACKBONES, PREPROCESSING

    assert set(PREPROCESSING) >= {
        "keras.applications.vgg16.preprocess_input",
        "keras.applications.mobilenet.preprocess_input",
    }
    assert all(spec.preprocessing in PREPROCESSING for spec in BACKBONES.values())
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    for name, keras_fn in [
        ("keras.applications.vgg16.preprocess_input", keras.applications.vgg16.preprocess_input),
        ("keras.applications.mobilenet.preprocess_input", keras.applications.mobilenet.preprocess_input),
    ]:
        np.testing.assert_array_equal(PREPROCESSING[name](x.copy()), keras_fn(x.copy()))


@pytest.mark.parametrize("name", ["os.system", "this.s", "numpy.asarray", "builtins.eval", ""])
def test_a_preprocessing_string_never_names_code(monkeypatch, name, tiny_config):
    """Issue 7: the fingerprint's preprocessing was imported and called (os.system with the pixels)."""
    import dataclasses
    import os
    import sys

    from headstart.settings.backbones import preprocess_function

    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    monkeypatch.delitem(sys.modules, "this", raising=False)
    config = dataclasses.replace(tiny_config, preprocessing=name)
    with pytest.raises(BackboneError) as err:
        preprocess_function(config)
    assert "keras.applications.vgg16.preprocess_input, keras.applications.mobilenet.preprocess_input" in str(err.value)
    with pytest.raises(BackboneError, match="preprocessing among"):
        ExtractionConfig.from_fingerprint({**tiny_config.fingerprint(), "preprocessing": name})
    assert not called and "this" not in sys.modules


def test_every_fingerprint_key_has_a_type_in_the_cache_schema():
    import dataclasses

    from headstart.cache.fingerprint import FINGERPRINT_TYPES, OPTIONAL_FINGERPRINT_TYPES

    fields = {f.name for f in dataclasses.fields(ExtractionConfig)} - {"weights_path"}
    assert set(FINGERPRINT_TYPES) | set(OPTIONAL_FINGERPRINT_TYPES) == fields


def test_fingerprints_of_every_backbone_round_trip():
    for config in (
        make_config("vgg16", weights="none", precision="float32"),
        make_config("vgg16", "block5_pool", weights="imagenet", input_size=64, precision="bfloat16"),
        make_config("mobilenet", alpha=0.25, weights=str(__file__), dtype="float32", resize="crop"),
        make_config("tiny", weights="none", precision="float32", views="flip"),
    ):
        assert ExtractionConfig.from_fingerprint(config.fingerprint()) == config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"backbone": "resnet"}, "Expected backbone among vgg16, mobilenet, resnet50,"),
        ({"backbone": 3}, "backbone is 3 of type integer"),
        ({"layer": "fc2"}, "Expected a layer of tiny among embed, pool"),
        ({"pooling": "max"}, "Expected pooling among null, avg"),
        ({"pooling": "avg"}, "Expected pooling None for tiny embed"),
        (
            {"preprocessing": "keras.applications.vgg16.preprocess_input"},
            "Expected preprocessing keras.applications.mobilenet",
        ),
        ({"preprocessing": ["os.system"]}, "of type array"),
        ({"alpha": 0.5}, "Expected alpha of tiny among null"),
        ({"alpha": 1}, "alpha is 1 of type integer"),
        ({"weights": "sha256:abc"}, "Expected weights among imagenet, none, sha256:<64 hex digits>"),
        ({"weights": "imagenet"}, "Expected a seed with weights none only"),
        ({"seed": "0"}, "seed is '0' of type string"),
        ({"seed": True}, "seed is True of type boolean"),
        ({"keras_version": "$(rm -rf /)"}, "Expected keras_version like"),
        ({"input_size": 0}, "Expected input_size from 32 to 4096"),
        ({"input_size": 10**9}, "Expected input_size from 32 to 4096"),
        ({"input_size": 32.0}, "input_size is 32.0 of type number"),
        ({"resize": "stretch"}, "Expected resize among squash, crop"),
        ({"jpeg_draft": 1}, "jpeg_draft is 1 of type integer"),
        ({"precision": "int8"}, "Expected precision among float32, bfloat16, float16"),
        ({"dtype": "float64"}, "Expected dtype among float16, float32"),
        ({"backend": "numpy"}, "Expected backend among tensorflow, jax, torch"),
        ({"resampler": "lanczos"}, "Expected resampler among float32, pillow-uint8"),
        ({"resampler": 1}, "resampler is 1 of type integer"),
    ],
)
def test_a_fingerprint_from_a_file_is_checked_field_by_field(tiny_config, change, message):
    with pytest.raises(BackboneError) as err:
        ExtractionConfig.from_fingerprint({**tiny_config.fingerprint(), **change})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "fingerprint, message",
    [
        ([], "JSON type array, not an object"),
        ("vgg16", "JSON type string, not an object"),
        ({"backbone": "tiny"}, "lacks the settings layer, pooling"),
    ],
)
def test_a_fingerprint_that_is_not_an_object_of_settings_is_refused(fingerprint, message):
    with pytest.raises(BackboneError, match=message):
        ExtractionConfig.from_fingerprint(fingerprint)


def test_new_caches_record_the_float32_resampler_and_old_fingerprints_read_as_pillow_uint8(tiny_config):
    """The resize is part of the fingerprint; a fingerprint written before it was (no
    ``resampler`` key) means Pillow on 8-bit pixels, and keeps its digest."""
    assert tiny_config.resampler == "float32" and tiny_config.jpeg_draft is False
    assert tiny_config.fingerprint()["resampler"] == "float32"
    old = {k: v for k, v in tiny_config.fingerprint().items() if k != "resampler"}
    back = ExtractionConfig.from_fingerprint(old)
    assert back.resampler == "pillow-uint8" and back.fingerprint() == old and back.digest() != tiny_config.digest()
    assert ExtractionConfig.from_fingerprint(tiny_config.fingerprint()) == tiny_config
