"""The decoding and float32 resize of headstart before issue 17, kept as the oracle of the faster path.

`headstart.extractor.decode` now splits and converts the channels in Pillow, transposes upright
pictures in place and may decode JPEGs with simplejpeg; the pixels must stay these, bit for bit.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from headstart.extractor.decode import _to_rgb, keras_crop_box


def reference_resize_float32(rgb: np.ndarray, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """The float32 resampler as it was: float32 numpy pixels, each channel resized by Pillow in mode F."""
    height, width = size
    a = np.asarray(rgb, dtype=np.float32)
    if resize == "crop":
        top, left, ch, cw = keras_crop_box(a.shape[0], a.shape[1], size)
        a = a[top : top + ch, left : left + cw]
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c])).resize((width, height), Image.BILINEAR))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def reference_load_image(data: bytes, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """`load_image(..., draft=False, resampler="float32")` as it was: Pillow decodes, `exif_transpose`
    copies, numpy converts; raises what Pillow raises."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        img = _to_rgb(ImageOps.exif_transpose(img))
        return reference_resize_float32(np.asarray(img, dtype=np.uint8), size, resize)
