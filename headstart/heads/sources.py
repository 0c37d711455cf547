"""Rows for the heads: sources that read feature rows a block at a time, and standardization.

A `RowSource` is what every head fits on and predicts from: `ArraySource` over arrays in memory,
`CacheSource` over chosen rows of an HDF5 cache larger than memory. `Standardizer` holds the
per-feature mean and scale of the training rows and is saved as arrays (`.npz`, no pickle).
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from headstart.errors import CacheError, RunError

STREAM_WINDOW = 4  # blocks of ~8 MiB mixed at a time when shuffling a streamed cache


class RowSource(Protocol):
    """Rows of features with their labels, readable a block at a time or by position.

    ``blocks`` are ``(start, stop)`` position ranges covering ``0..len(labels)`` in order;
    reading one block is cheap (it may return a view). ``gather`` returns a new float32 array
    of the rows at the given positions. ``shuffle_window`` is how many blocks an epoch may mix
    at once (all of them for arrays in memory; a few for a file).
    """

    labels: np.ndarray
    n_features: int
    blocks: Sequence[tuple[int, int]]
    shuffle_window: int

    def read_block(self, b: int) -> np.ndarray: ...

    def gather(self, positions: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """A `RowSource` over an array in memory (any float dtype; rows come out as float32)."""

    def __init__(
        self, X: np.ndarray, y: np.ndarray | None = None, rows: np.ndarray | None = None, block_rows: int = 1024
    ):
        self._X = X
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = len(X) if rows is None else len(self._rows)
        full = np.zeros(len(X), dtype=np.int64) if y is None else np.asarray(y)
        self.labels = full if rows is None else full[self._rows]
        self.n_features = int(X.shape[1])
        self.blocks = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]
        self.shuffle_window = max(1, len(self.blocks))

    def __len__(self) -> int:
        return len(self.labels)

    def read_block(self, b: int) -> np.ndarray:
        start, stop = self.blocks[b]
        if self._rows is None:
            return np.asarray(self._X[start:stop], dtype=np.float32)
        return np.asarray(self._X[self._rows[start:stop]], dtype=np.float32)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        idx = positions if self._rows is None else self._rows[positions]
        return np.asarray(self._X[idx], dtype=np.float32)

    def array(self) -> np.ndarray:
        """All rows at their own dtype (no copy when the source has no row subset)."""
        return self._X if self._rows is None else self._X[self._rows]


def subset(source, positions: np.ndarray):
    """The rows of an `ArraySource` or a `CacheSource` at ``positions`` (ascending), as a source of the same kind."""
    positions = np.asarray(positions, dtype=np.int64)
    if isinstance(source, ArraySource):
        rows = positions if source._rows is None else source._rows[positions]
        full = np.zeros(len(source._X), dtype=source.labels.dtype)
        full[rows] = source.labels[positions]
        return ArraySource(source._X, full, rows=rows)
    return CacheSource(source._cache, source._rows[positions], source.labels[positions])


class CacheSource:
    """A `RowSource` over chosen rows of an open cache, read a block of ~8 chunks at a time.

    Shuffling mixes `STREAM_WINDOW` blocks at once; recently read blocks are kept so that each
    block is read about once per epoch. Every block read is checked for NaN and infinity.
    """

    def __init__(self, cache, rows: np.ndarray, labels: np.ndarray | None = None):
        self._cache = cache
        self._rows = np.asarray(rows, dtype=np.int64)
        self.labels = cache.labels[self._rows] if labels is None else np.asarray(labels)
        self.n_features = cache.dim
        n = len(self._rows)
        group = self._rows // cache.block_rows
        cuts = np.flatnonzero(np.diff(group)) + 1
        self._starts = np.concatenate([[0], cuts]).astype(np.int64) if n else np.zeros(0, np.int64)
        stops = np.concatenate([cuts, [n]]).astype(np.int64) if n else np.zeros(0, np.int64)
        self.blocks = list(zip(self._starts.tolist(), stops.tolist()))
        self.shuffle_window = STREAM_WINDOW
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def read_block(self, b: int) -> np.ndarray:
        start, stop = self.blocks[b]
        lo, hi = int(self._rows[start]), int(self._rows[stop - 1]) + 1
        block = self._cache.read(lo, hi, dtype=self._cache.dtype)  # convert only the rows kept
        rows = block[self._rows[start:stop] - lo].astype(np.float32)
        check_finite(rows, self._cache, self._rows[start:stop])
        return rows

    def _block(self, b: int) -> np.ndarray:
        if b in self._kept:
            self._kept.move_to_end(b)
            return self._kept[b]
        data = self.read_block(b)
        self._kept[b] = data
        while len(self._kept) > 2 * self.shuffle_window + 1:
            self._kept.popitem(last=False)
        return data

    def gather(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.n_features), dtype=np.float32)
        which = np.searchsorted(self._starts, positions, side="right") - 1
        for b in np.unique(which):
            mask = which == b
            out[mask] = self._block(int(b))[positions[mask] - self._starts[b]]
        return out


def check_finite(block: np.ndarray, cache, rows: np.ndarray | None = None, first_row: int = 0) -> None:
    """Raise `CacheError` naming the first pictures whose feature rows hold NaN or infinity.

    ``rows`` are the cache row numbers of ``block`` (else ``first_row``, ``first_row + 1``, ...)."""
    bad = ~np.isfinite(block).all(axis=1)
    if not bad.any():
        return
    where = np.flatnonzero(bad)
    numbers = (rows[where] if rows is not None else first_row + where).tolist()
    shown = ", ".join(f"{cache.paths[i]} (row {i})" for i in numbers[:3])
    more = f" and {len(numbers) - 3} more in this block" if len(numbers) > 3 else ""
    raise CacheError(
        f"Expected finite features in {cache.path}. Received: NaN or infinity in the rows of {shown}{more}; "
        "extract those pictures again (extract --overwrite)."
    )


def iter_blocks(source: RowSource) -> Iterator[np.ndarray]:
    """Every block of a source, in order."""
    for b in range(len(source.blocks)):
        yield source.read_block(b)


def as_array(source: RowSource) -> np.ndarray:
    """All rows of a source in one array (heads that need memory, like logistic regression)."""
    if isinstance(source, ArraySource):
        return source.array()
    if not source.blocks:
        return np.zeros((0, source.n_features), dtype=np.float32)
    return np.concatenate(list(iter_blocks(source)))


class Standardizer:
    """Per-feature ``(x - mean) / scale``; statistics from the training rows only."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)

    @classmethod
    def identity(cls, n_features: int) -> Standardizer:
        return cls(np.zeros(n_features), np.ones(n_features))

    @classmethod
    def fit_blocks(cls, blocks: Iterator[np.ndarray], n_features: int) -> Standardizer:
        """Mean and standard deviation over blocks of rows (Chan's merge, float64 accumulators)."""
        n = 0
        mean = np.zeros(n_features, dtype=np.float64)
        m2 = np.zeros(n_features, dtype=np.float64)
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            k = len(block)
            if k == 0:
                continue
            b_mean = block.mean(axis=0, dtype=np.float64)
            d = block - b_mean.astype(block.dtype)
            b_m2 = np.einsum("ij,ij->j", d, d, dtype=np.float64)
            delta = b_mean - mean
            total = n + k
            mean += delta * (k / total)
            m2 += b_m2 + delta**2 * (n * k / total)
            n = total
        std = np.sqrt(m2 / max(n, 1))
        std[~(std > 1e-12)] = 1.0  # constant features pass through unscaled
        return cls(mean, std)

    def transform(self, X: np.ndarray, copy: bool = True) -> np.ndarray:
        """Standardized float32 rows; with ``copy=False`` a float32 ``X`` is overwritten in place."""
        out = np.array(X, dtype=np.float32, copy=True if copy else None)
        out -= self.mean
        out /= self.scale
        return out

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale)

    @classmethod
    def load(cls, path: Path, n_features: int) -> Standardizer:
        """Read and check a saved standardization: two finite float vectors of ``n_features``, scale > 0."""
        arrays = load_arrays(path, {"mean": (n_features,), "scale": (n_features,)})
        if not (arrays["scale"] > 0).all():
            raise RunError(f"Expected positive scales in {path}. Received: zero or negative values.")
        return cls(arrays["mean"], arrays["scale"])


MAX_DEFLATE_RATIO = 64
"""A compressed member may unpack to at most this many times its size (headstart stores them plain)."""


def _check_members(path: Path, zf: zipfile.ZipFile, shapes: dict[str, tuple[int, ...]]) -> None:
    """Each array's ``.npy`` header read alone, before numpy allocates what it declares: the shape
    and type that ``head.json`` expects, and exactly as many bytes as the member really holds."""
    size = os.path.getsize(path)
    for name, want in shapes.items():
        info = zf.getinfo(f"{name}.npy")
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"{name}: .npy format {version} is not read")
            header = fh.tell()
        if dtype.kind != "f" or tuple(shape) != tuple(want):
            raise RunError(
                f"Expected {name} in {path} as floats of shape {want}. Received: {dtype} of shape {tuple(shape)}."
            )
        declared = header + int(np.prod(want, dtype=object)) * dtype.itemsize
        stored = info.compress_size if info.compress_type == zipfile.ZIP_STORED else None
        if (
            info.file_size != declared
            or info.compress_size > size
            or (stored is not None and stored != info.file_size)
            or (stored is None and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + (64 << 10))
        ):
            raise RunError(
                f"Expected {name} in {path} to hold the {declared:,} bytes its shape {want} needs. "
                f"Received: a member of {info.file_size:,} bytes ({info.compress_size:,} stored); "
                "the file was not written by headstart, or head.json does not belong with it."
            )


def load_arrays(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Named float arrays of an ``.npz`` file, checked: no pickle, exactly these names and shapes, finite.

    Every shape, type and size is checked from the members' headers before an array is read, so a
    file that declares a huge array is refused without allocating it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if names != set(shapes):
                raise RunError(
                    f"Expected the arrays {', '.join(sorted(shapes))} in {path}. "
                    f"Received: {', '.join(sorted(names)) or 'none'}."
                )
            _check_members(path, z.zip, shapes)
            out = {name: z[name] for name in shapes}
    except RunError:
        raise
    except FileNotFoundError:
        raise RunError(f"Expected {path}. Received: no such file.") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:  # not a zip, truncated, objects
        raise RunError(f"Expected a readable array file {path}. Received: a damaged file ({err}).") from None
    for name, want in shapes.items():
        arr = out[name]
        if arr.dtype.kind != "f" or arr.shape != want:
            raise RunError(
                f"Expected {name} in {path} as floats of shape {want}. Received: {arr.dtype} of shape {arr.shape}."
            )
        if not np.isfinite(arr).all():
            raise RunError(f"Expected finite values of {name} in {path}. Received: NaN or infinity.")
        out[name] = arr if arr.dtype == np.float16 else arr.astype(np.float32)  # float16 stays compact
    return out
