"""Pictures for people: thumbnails (JPEG bytes or arrays) and captioned montages of findings.

Every picture file is data: one that is missing, unreadable, or a decompression bomb gives a
grey placeholder, never an exception. Only regular files inside the given root are read (no
``..``, no link out of it, no pipe or device; `headstart.files`), so a forged root or path
cannot put another picture of the machine into a report.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headstart.errors import UnsafeFileError
from headstart.files import inside, read_regular

log = logging.getLogger(__name__)


def thumbnail(root: Path, rel: str, size: int = 96) -> np.ndarray | None:
    """An RGB array at most ``size`` pixels a side of ``root / rel``, or None if unreadable or
    not a regular file inside ``root``."""
    from PIL import Image, ImageOps

    path = inside(root, rel)
    if path is None:
        log.info("thumbnail: %s is not a file inside %s", rel, root)
        return None
    try:
        with Image.open(io.BytesIO(read_regular(path))) as im:
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        MemoryError,
        Image.DecompressionBombError,
        UnsafeFileError,
    ) as err:
        log.info("thumbnail: cannot read %s (%s)", path, err)
        return None


def thumbnail_jpeg(root: Path, rel: str, size: int = 96, quality: int = 80) -> bytes | None:
    """JPEG bytes of `thumbnail`, for embedding in HTML; None if unreadable."""
    from PIL import Image

    arr = thumbnail(root, rel, size)
    if arr is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def montage(items: Sequence[tuple[str, str]], root: Path, path: Path, columns: int = 5, thumb: int = 160) -> Path:
    """Draw ``(relative path, caption)`` items in a grid into the PNG ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(items))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * thumb / 80, rows * (thumb / 80 + 0.45)), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (rel, caption) in zip(axes, items):
        arr = thumbnail(root, rel, thumb)
        if arr is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(arr)
        ax.set_title(caption.replace("$", r"\$"), fontsize=7)  # no mathtext from file names
    fig.savefig(path, format="png")
    return path
