"""Image decoding: any picture file → an RGB array of the backbone's input size, or a reason.

Two resamplers (the cache's fingerprint says which, `headstart.settings.config.RESAMPLERS`):

- ``float32`` (new caches): the picture is decoded to 8-bit RGB, then resized bilinearly with
  antialiasing on float32 pixels, never rounded, and with Keras' centre-crop box for ``crop``.
  This is what ``keras.layers.Resizing(interpolation="bilinear", antialias=True)`` computes, so
  the model written by ``headstart export`` sees the same pixels as extraction and ``predict``
  (measured: 3e-3 of a grey level at most).
- ``pillow-uint8`` (caches made before): Pillow's bilinear resize on 8-bit RGB, rounded to
  integers in each pass, with `ImageOps.fit`'s fractional crop box. No Keras layer reproduces
  the rounding; it is kept to read and extend those caches.

Two decoders (``decoder`` in the fingerprint, `headstart.settings.config.DECODERS`): ``pillow``, and
``simplejpeg`` for the JPEGs it reads as Pillow does (`headstart.extractor.fastjpeg`).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from headstart import files
from headstart.errors import DecodeError, UnsafeFileError
from headstart.extractor import fastjpeg
from headstart.settings.config import (  # the registries live with the settings
    DECODERS,
    DEFAULT_DECODER,
    RESAMPLERS,
    RESIZE_METHODS,
)

# Truncated files are errors, not pictures with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit greyscale: scale the full range to 0-255 instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 255.0)
        arr = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def keras_crop_box(height: int, width: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` of the centre crop to the target's aspect ratio,
    computed as ``keras.layers.Resizing(crop_to_aspect_ratio=True)`` does (float32, truncated)."""
    th, tw = target
    ch = max(min(height, int(np.float32(width * th) / np.float32(tw))), 1)
    cw = max(min(width, int(np.float32(height * tw) / np.float32(th))), 1)
    return int(np.float32(height - ch) / 2), int(np.float32(width - cw) / 2), ch, cw


def resize_float32(rgb: Image.Image | np.ndarray, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """Resize an RGB picture (a Pillow image, or an ``(h, w, 3)`` uint8 array) to ``size = (height,
    width)`` as float32 pixels: Pillow's bilinear filter (a triangle as wide as the scale when
    shrinking) on each channel in 32-bit float mode, so nothing is rounded; ``crop`` first cuts
    `keras_crop_box`. Each channel is made float by Pillow, without a float copy of the whole
    picture (the same numbers: 0-255 are exact in float32); a Pillow image is split by Pillow,
    an array one contiguous channel at a time (the cheaper way for each, measured)."""
    height, width = size
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
    if isinstance(rgb, Image.Image):
        if resize == "crop":
            top, left, ch, cw = keras_crop_box(rgb.height, rgb.width, size)
            rgb = rgb.crop((left, top, left + cw, top + ch))
        bands = rgb.split()
    else:
        a = np.asarray(rgb, dtype=np.uint8)
        if resize == "crop":
            top, left, ch, cw = keras_crop_box(a.shape[0], a.shape[1], size)
            a = a[top : top + ch, left : left + cw]
        bands = [Image.fromarray(np.ascontiguousarray(a[..., c])) for c in range(3)]
    out = np.empty((height, width, 3), dtype=np.float32)
    for c, band in enumerate(bands):
        out[..., c] = np.asarray(band.convert("F").resize((width, height), Image.BILINEAR))
    return out


def read_picture(path: str | Path) -> bytes:
    """The bytes of a picture file; `DecodeError` for an empty file, a pipe, a device, a folder, or
    a file over `headstart.files.MAX_PICTURE_BYTES` (nothing is opened that could block or never end)."""
    try:
        data = files.read_regular(path, files.MAX_PICTURE_BYTES)
    except UnsafeFileError as err:
        raise DecodeError(f"cannot read: {err}") from None
    except (OSError, MemoryError) as err:
        raise DecodeError(f"cannot read: {getattr(err, 'strerror', None) or err}") from None
    if not data:
        raise DecodeError("empty file")
    return data


def load_pixels(path: str | Path) -> np.ndarray:
    """Decode ``path`` whole, without resizing: an ``(height, width, 3)`` uint8 array, what an app
    gives a model exported by ``headstart export``. Same checks and reasons as `load_image`."""
    return load_image(path, None)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation → the transposition that shows the picture upright (as `ImageOps.exif_transpose`)."""


def _decode(img: Image.Image, data: bytes | None, size, draft: bool, decoder: str) -> Image.Image | np.ndarray:
    """The opened ``img`` decoded, upright, in RGB: by simplejpeg where ``decoder`` asks for it and it
    reads the file as Pillow does (an ``(h, w, 3)`` uint8 array), else by Pillow (a Pillow image,
    with draft mode if asked)."""
    if decoder == "simplejpeg" and data is not None and size is not None and not draft:
        # A JPEG's EXIF and XMP are read with its header (Image.open), as exif_transpose reads them.
        method = _TRANSPOSE.get(img.getexif().get(ExifTags.Base.Orientation, 1))
        fast = fastjpeg.decode(img, data)
        if fast is not None:  # turned upright by Pillow's own transpose, the few that need it
            return fast if method is None else np.asarray(Image.fromarray(fast).transpose(method))
    if draft and size and img.format == "JPEG":
        # Decode at 1/2, 1/4 or 1/8 scale, never below twice the target size.
        height, width = size
        img.draft("RGB", (width * 2, height * 2))
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # not a copy of every upright picture
    return _to_rgb(img)


def load_image(
    path: str | Path | BinaryIO,
    size: tuple[int, int] | None,
    resize: str = "squash",
    draft: bool = True,
    resampler: str = "pillow-uint8",
    decoder: str = DEFAULT_DECODER,
) -> np.ndarray:
    """Decode ``path`` to an ``(height, width, 3)`` array of ``size = (height, width)``: uint8
    with the ``pillow-uint8`` resampler, float32 with ``float32`` (see the module docstring).

    EXIF orientation is applied, every mode becomes RGB, animated files give their first frame.
    ``squash`` resizes both sides bilinearly (aspect ratio not kept, as `keras.utils.load_img`);
    ``crop`` resizes the short side and cuts the centre. ``draft`` lets Pillow's JPEG decoder
    skip detail it would throw away (DCT scaling) when the picture is at least twice the size
    (faster; an exported model, which gets the whole picture, then sees other pixels).
    ``size=None`` keeps the picture's own size (no draft, no resize, uint8, Pillow's decoder).
    ``decoder``: ``pillow``, or ``simplejpeg`` (`headstart.extractor.fastjpeg`; not with ``draft``).
    Raises `DecodeError` with a short reason for anything that is not a readable picture. A path
    is read by `read_picture`: a regular file only, at most `headstart.files.MAX_PICTURE_BYTES`.
    """
    height, width = size or (0, 0)
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {RESAMPLERS}, got {resampler!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "simplejpeg":
        fastjpeg.require()
    data = None
    if isinstance(path, (str, Path)):
        data = read_picture(path)
        path = io.BytesIO(data)
    elif isinstance(path, io.BytesIO):
        data = path.getvalue()
    try:
        # Pillow refuses pictures over 2 x Image.MAX_IMAGE_PIXELS (~179 MP) as decompression bombs.
        with Image.open(path) as img:
            img = _decode(img, data, size, draft, decoder)
            if isinstance(img, np.ndarray) and resampler != "float32":  # simplejpeg's pixels, resized by Pillow
                img = Image.fromarray(img)
            if size is not None and resampler == "float32":
                arr = resize_float32(img, size, resize)
            elif size is not None and resize == "squash":
                img = img.resize((width, height), Image.BILINEAR)
            elif size is not None and resize == "crop":
                img = ImageOps.fit(img, (width, height), Image.BILINEAR)
            elif size is not None:
                raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
            if size is None or resampler != "float32":
                arr = np.asarray(img, dtype=np.uint8)
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise DecodeError(f"decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise DecodeError(f"cannot decode: {err}") from None
    if size is None and (arr.ndim != 3 or arr.shape[2] != 3):  # pragma: no cover - Pillow contract
        raise DecodeError(f"decoded to shape {arr.shape}")
    if size is not None and arr.shape != (height, width, 3):  # pragma: no cover - Pillow contract
        raise DecodeError(f"decoded to shape {arr.shape}")
    return arr


def load_image_hashed(
    path: str | Path,
    size: tuple[int, int],
    resize: str = "squash",
    draft: bool = True,
    resampler: str = "pillow-uint8",
    decoder: str = DEFAULT_DECODER,
) -> tuple[np.ndarray, str]:
    """`load_image`, and the hex SHA-256 of the file's bytes, from one read of the file.

    The file is read into memory once (Pillow reads it whole anyway), hashed, and decoded from
    those bytes. Raises `DecodeError` as `load_image` does.
    """
    data = read_picture(path)
    digest = hashlib.sha256(data).hexdigest()
    return load_image(io.BytesIO(data), size, resize, draft, resampler, decoder), digest
