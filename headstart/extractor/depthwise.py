"""Swap grouped convolutions that are depthwise in disguise for `DepthwiseConv2D`, weights carried.

Keras' ConvNeXt writes its 7x7 depthwise convolution as ``Conv2D(groups=channels)``. TensorFlow's
CPU kernel for grouped convolution is a slow generic path: on 2 cores a 7x7 grouped Conv2D over
8 x 56 x 56 x 96 takes about 1.5 s, the same layer as `DepthwiseConv2D` about 0.01 s, and the two
give the same numbers to float32 rounding (max |diff| about 1e-7). That one layer kind is why
ConvNeXt Tiny ran at 0.2 pictures/s on a CPU where ResNet50, of similar FLOPs, runs at 5.7.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _is_depthwise_in_disguise(layer) -> bool:
    import keras

    if type(layer) is not keras.layers.Conv2D or layer.groups == 1:
        return False
    channels = layer.input.shape[-1]
    return layer.groups == channels == layer.filters and layer.dilation_rate == (1, 1)


def grouped_to_depthwise(model):
    """The same functional model with every ``Conv2D(groups=channels, filters=channels)`` built as
    `DepthwiseConv2D` (same name, kernel, strides, padding, bias, activation, weights). A model
    without such layers comes back unchanged."""
    import keras

    swapped = [layer.name for layer in model.layers if _is_depthwise_in_disguise(layer)]
    if not swapped:
        return model

    def clone(layer):
        if layer.name not in swapped:
            return layer.__class__.from_config(layer.get_config())
        return keras.layers.DepthwiseConv2D(
            kernel_size=layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            depth_multiplier=1,
            data_format=layer.data_format,
            activation=layer.activation,
            use_bias=layer.use_bias,
            dtype=layer.dtype_policy,
            name=layer.name,
        )

    fast = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, fast.layers):
        weights = old.get_weights()
        if old.name in swapped:
            # Conv2D groups kernel (kh, kw, 1, C) -> DepthwiseConv2D kernel (kh, kw, C, 1).
            weights = [weights[0].transpose(0, 1, 3, 2), *weights[1:]]
        new.set_weights(weights)
    log.info("built %d grouped convolutions of %s as depthwise ones", len(swapped), model.name)
    return fast
