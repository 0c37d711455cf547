"""Dataset scan: a folder with one sub-folder per class → a sorted list of (relative path, label)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headstart.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    """True for a file whose extension (any case) is one of `IMAGE_EXTENSIONS`."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class Dataset:
    """The pictures of a dataset: ``items[i] = (path relative to root, label index)``.

    ``skipped_links``: symbolic links to folders that were not followed, as (path relative to
    root, reason): a loop back to a folder above them, or a folder already scanned elsewhere.
    """

    root: Path
    class_names: tuple[str, ...]
    items: tuple[tuple[str, int], ...]
    skipped_links: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.class_names, 0)
        for _, label in self.items:
            out[self.class_names[label]] += 1
        return out


@dataclass
class Pictures:
    """Picture files found under some folders, and the links to folders not followed (path, reason)."""

    files: list[Path] = field(default_factory=list)
    skipped_links: list[tuple[Path, str]] = field(default_factory=list)


class _Walk:
    """Finds pictures under folders, following each real folder at most once.

    A symbolic link to a folder is followed unless that folder was already scanned: a link back
    to a folder above it (a loop; ``ln -s . loop`` once made 9 pictures 369 rows) or a second way
    to a folder seen before. Each such link is skipped, logged once and listed.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.seen: dict[tuple[int, int], Path] = {}
        self.skipped: list[tuple[Path, str]] = []
        self.above: frozenset[tuple[int, int]] = frozenset()  # folders above every walk (a dataset root)
        if root is not None:
            st = os.stat(root)
            self.above = frozenset({(st.st_dev, st.st_ino)})
            self.seen[(st.st_dev, st.st_ino)] = root

    def _skip(self, link: Path, reason: str) -> None:
        log.warning("not following %s: %s", link, reason)
        self.skipped.append((link, reason))

    def images(self, folder: Path) -> list[Path]:
        found: list[Path] = []
        try:
            st = os.stat(folder)
        except OSError as err:
            self._skip(folder, f"cannot be read ({err.strerror or err})")
            return found
        key = (st.st_dev, st.st_ino)
        if key in self.above:
            self._skip(folder, f"a symbolic link loop back to {self.seen[key]}")
            return found
        if key in self.seen:
            self._skip(folder, f"the folder {self.seen[key]} again")
            return found
        self.seen[key] = folder
        stack = [(folder, self.above | {key})]
        while stack:
            here, above = stack.pop()
            try:
                entries = sorted(os.scandir(here), key=lambda e: e.name)
            except OSError as err:
                log.warning("cannot read the folder %s: %s", here, err.strerror or err)
                continue
            below = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                try:
                    is_dir = entry.is_dir()  # follows links; False for a broken one or a link to itself
                except OSError:
                    is_dir = False
                if not is_dir:
                    if is_image_file(path):
                        found.append(path)
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in above:
                    self._skip(path, f"a symbolic link loop back to {self.seen[key]}")
                elif key in self.seen:
                    self._skip(path, f"the folder {self.seen[key]} again")
                else:
                    self.seen[key] = path
                    below.append((path, above | {key}))
            stack.extend(reversed(below))  # depth first, in name order
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
    walk = _Walk(root)  # a link back to the root is a loop too
    for label, name in enumerate(class_names):
        files = sorted(p.relative_to(root).as_posix() for p in walk.images(root / name))
        if not files:
            raise DatasetError(
                f"Expected pictures ({', '.join(sorted(IMAGE_EXTENSIONS))}) in every class folder. "
                f"Received: {root / name} (none). Remove the folder or pass --exclude {name}."
            )
        if limit_per_class is not None:
            files = files[:limit_per_class]
        items.extend((f, label) for f in files)
    skipped = tuple((p.relative_to(root).as_posix(), reason) for p, reason in walk.skipped)
    dataset = Dataset(root=root, class_names=class_names, items=tuple(items), skipped_links=skipped)
    log.info("found %d pictures in %d classes under %s", len(dataset), len(class_names), root)
    return dataset


def find_pictures(paths: Sequence[str | os.PathLike]) -> Pictures:
    """Files as given (whatever their extension) and, for folders, every picture inside, sorted per
    folder; each real folder is scanned once (links that loop or repeat are listed, not followed)."""
    out = Pictures()
    walk = _Walk()
    for p in map(Path, paths):
        if p.is_dir():
            out.files.extend(sorted(walk.images(p)))
        else:
            out.files.append(p)
    out.skipped_links = walk.skipped
    return out


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files of `find_pictures` (links not followed are logged as warnings)."""
    return find_pictures(paths).files
