"""Image decoding: any picture file → an RGB uint8 array of the backbone's input size, or a reason."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from headstart import files
from headstart.errors import DecodeError, UnsafeFileError
from headstart.settings.config import RESIZE_METHODS  # the registry lives with the settings

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


def load_image(
    path: str | Path | BinaryIO, size: tuple[int, int] | None, resize: str = "squash", draft: bool = True
) -> np.ndarray:
    """Decode ``path`` to an ``(height, width, 3)`` uint8 array of ``size = (height, width)``.

    EXIF orientation is applied, every mode becomes RGB, animated files give their first frame.
    ``squash`` resizes both sides bilinearly (aspect ratio not kept, as `keras.utils.load_img`);
    ``crop`` resizes the short side and cuts the centre. ``draft`` lets Pillow's JPEG decoder
    skip detail it would throw away (DCT scaling) when the picture is at least twice the size.
    ``size=None`` keeps the picture's own size (no draft, no resize).
    Raises `DecodeError` with a short reason for anything that is not a readable picture. A path
    is read by `read_picture`: a regular file only, at most `headstart.files.MAX_PICTURE_BYTES`.
    """
    height, width = size or (0, 0)
    if isinstance(path, (str, Path)):
        path = io.BytesIO(read_picture(path))
    try:
        # Pillow refuses pictures over 2 x Image.MAX_IMAGE_PIXELS (~179 MP) as decompression bombs.
        with Image.open(path) as img:
            if draft and size and img.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale, never below twice the target size.
                img.draft("RGB", (width * 2, height * 2))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if size is not None and resize == "squash":
                img = img.resize((width, height), Image.BILINEAR)
            elif size is not None and resize == "crop":
                img = ImageOps.fit(img, (width, height), Image.BILINEAR)
            elif size is not None:
                raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
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
    path: str | Path, size: tuple[int, int], resize: str = "squash", draft: bool = True
) -> tuple[np.ndarray, str]:
    """`load_image`, and the hex SHA-256 of the file's bytes, from one read of the file.

    The file is read into memory once (Pillow reads it whole anyway), hashed, and decoded from
    those bytes. Raises `DecodeError` as `load_image` does.
    """
    data = read_picture(path)
    digest = hashlib.sha256(data).hexdigest()
    return load_image(io.BytesIO(data), size, resize, draft), digest
