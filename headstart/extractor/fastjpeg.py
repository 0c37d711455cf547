"""JPEG decoding through simplejpeg (libjpeg-turbo, the ``fastjpeg`` extra): Pillow's pixels, fewer copies.

Pillow decodes a JPEG with libjpeg-turbo too, a few lines at a time into its own 4-byte layout;
simplejpeg decodes the whole file in one call into an array, without the GIL. With the same
settings (accurate integer DCT, smooth chroma upsampling: both libraries' defaults) the two give
the same pixels: `tests/test_fastjpeg.py` checks it bit for bit on real photos, every chroma
subsampling, progressive files, greyscale, and every EXIF orientation. Two builds of libjpeg-turbo
are not promised to agree, so the decoder is recorded in the cache's fingerprint all the same.

Only what simplejpeg reads exactly as Pillow does goes through it: a JPEG that Pillow opens as RGB
or greyscale, read without a libjpeg warning. Everything else (CMYK, MPO, PNG, damaged or
truncated files...) is left to Pillow, so a bad file ends with Pillow's outcome and reason.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from PIL import Image

from headstart.errors import BackboneError

INSTALL_HINT = "pip install -e '.[fastjpeg]' in the headstart clone (or pip install simplejpeg)"


def available() -> bool:
    """Whether simplejpeg can be imported."""
    return importlib.util.find_spec("simplejpeg") is not None


def require() -> None:
    """`BackboneError` naming the extra to install when simplejpeg is missing."""
    if not available():
        raise BackboneError(
            f"Expected simplejpeg for the decoder simplejpeg. Received: no module simplejpeg; {INSTALL_HINT}, "
            "or extract with --decoder pillow."
        )


def version() -> str | None:
    """simplejpeg's version, None without it."""
    if not available():
        return None
    import simplejpeg

    return str(simplejpeg.__version__)


def decode(img: Image.Image, data: bytes) -> np.ndarray | None:
    """The RGB pixels of ``data``, a JPEG that Pillow opened as ``img`` (header read, not decoded),
    as an ``(h, w, 3)`` uint8 array; EXIF orientation is not applied. None where Pillow must decode it: not a
    JPEG Pillow reads as RGB or greyscale, or a file libjpeg-turbo warns about (damaged,
    truncated, bytes after the end), so that such a file gets Pillow's outcome and reason."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    import simplejpeg

    try:
        # strict: a libjpeg warning is an error here, and Pillow then decides what the file is.
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except (ValueError, MemoryError):
        return None
    if pixels.shape != (img.height, img.width, 3):  # pragma: no cover - a header Pillow reads otherwise
        return None
    return pixels
