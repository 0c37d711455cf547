"""extractor.depthwise: grouped convolutions that are depthwise ones are rebuilt as such, same numbers."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from headstart.extractor.depthwise import grouped_to_depthwise  # noqa: E402
from headstart.extractor.model import build_model  # noqa: E402
from headstart.extractor.options import make_config  # noqa: E402


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8, name="dw")(inputs)  # depthwise in disguise
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2, name="grouped")(x)  # truly grouped: kept
    x = keras.layers.Conv2D(4, 1, name="pointwise")(x)
    return keras.Model(inputs, x)


def test_a_depthwise_grouped_conv_is_rebuilt_and_gives_the_same_numbers():
    model = _model()
    fast = grouped_to_depthwise(model)
    kinds = {layer.name: type(layer).__name__ for layer in fast.layers}
    assert kinds["dw"] == "DepthwiseConv2D"
    assert kinds["grouped"] == "Conv2D" and kinds["pointwise"] == "Conv2D"
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 8)).astype("float32")
    np.testing.assert_allclose(fast.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_a_model_without_such_layers_comes_back_unchanged():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    assert grouped_to_depthwise(model) is model


def test_convnext_is_built_without_grouped_convolutions():
    config = make_config("convnext_tiny", weights="none", input_size=32, precision="float32")
    model = build_model(config)
    grouped = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert grouped == []
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers) == 18
