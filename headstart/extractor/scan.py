"""Dataset scan: a folder with one sub-folder per class → a sorted list of (relative path, label)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from headstart.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    """True for a file whose extension (any case) is one of `IMAGE_EXTENSIONS`."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class Dataset:
    """The pictures of a dataset: ``items[i] = (path relative to root, label index)``."""

    root: Path
    class_names: tuple[str, ...]
    items: tuple[tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.class_names, 0)
        for _, label in self.items:
            out[self.class_names[label]] += 1
        return out


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / name for name in filenames if is_image_file(Path(name)))
    return found


def scan_dataset(
    root: str | os.PathLike,
    *,
    exclude: Iterable[str] = (),
    limit_per_class: int | None = None,
) -> Dataset:
    """Find every picture under ``root/<class>/`` (recursively), classes and files sorted.

    Raises `DatasetError` for a missing path, a folder without class sub-folders, a class
    without pictures, or fewer than two classes.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"Expected a folder with one sub-folder per class. Received: {root} (does not exist).")
    if not root.is_dir():
        raise DatasetError(f"Expected a folder with one sub-folder per class. Received: {root} (a file).")
    if limit_per_class is not None and limit_per_class < 1:
        raise DatasetError(f"Expected --limit-per-class of at least 1. Received: {limit_per_class}.")
    exclude = set(exclude)
    try:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise DatasetError(f"Cannot read the folder {root}: {err.strerror or err}.") from None
    if not subdirs:
        raise DatasetError(
            f"Expected a folder with one sub-folder per class (e.g. Cat/, Dog/). Received: {root} (no sub-folders)."
        )
    unknown = sorted(exclude - set(subdirs))
    if unknown:
        raise DatasetError(
            f"Expected --exclude to name classes of {root} ({', '.join(subdirs)}). Received: {', '.join(unknown)}."
        )
    class_names = tuple(name for name in subdirs if name not in exclude)
    if len(class_names) < 2:
        raise DatasetError(
            f"Expected at least two classes. Received: {root} with {len(class_names)} "
            f"({', '.join(class_names) or 'none'}) after exclusions."
        )
    items: list[tuple[str, int]] = []
    for label, name in enumerate(class_names):
        files = sorted(p.relative_to(root).as_posix() for p in _walk_images(root / name))
        if not files:
            raise DatasetError(
                f"Expected pictures ({', '.join(sorted(IMAGE_EXTENSIONS))}) in every class folder. "
                f"Received: {root / name} (none). Remove the folder or pass --exclude {name}."
            )
        if limit_per_class is not None:
            files = files[:limit_per_class]
        items.extend((f, label) for f in files)
    dataset = Dataset(root=root, class_names=class_names, items=tuple(items))
    log.info("found %d pictures in %d classes under %s", len(dataset), len(class_names), root)
    return dataset


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given (whatever their extension) and, for folders, every picture inside, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(_walk_images(p)))
        else:
            out.append(p)
    return out
