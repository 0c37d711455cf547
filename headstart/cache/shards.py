"""Shards: which pictures of a folder belong to shard I of N, decided by each picture's relative path.

A picture's shard is a pure function of its relative path: SHA-256 of ``"shard\\0" + path`` read as
a number ``u`` in [0, 1), shard ``floor(u * N)``. So every machine of a cluster agrees without
talking to the others, a picture keeps its shard when pictures are added (nothing is re-ranked),
and shards are equal in expectation. The ``shard`` prefix keeps shards independent of the
train / validation / test split (`headstart.heads.split`, which hashes ``seed\\0`` + path): a
shard is not a split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headstart.cache.paths import normalize_path
from headstart.errors import ShardError

METHOD = "sha256('shard' NUL relative path) -> floor(u * count)"


def shard_of(paths: Sequence[str], count: int) -> np.ndarray:
    """The shard (0 ... ``count``-1) of each relative path."""
    out = np.empty(len(paths), dtype=np.int64)
    for i, p in enumerate(paths):
        digest = hashlib.sha256(b"shard\0" + normalize_path(p).encode("utf-8", "surrogateescape")).digest()
        out[i] = (int.from_bytes(digest[:8], "big") * count) >> 64
    return out


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``index`` from 0)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1):
            raise ShardError(f"Expected --shards of at least 1. Received: {self.count}.")
        if not (isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ShardError(
                f"Expected --shard from 0 to {self.count - 1} with --shards {self.count}. Received: {self.index}."
            )

    @classmethod
    def from_options(cls, shards: int | None, shard: int | None) -> Shard | None:
        """The shard the CLI options name, or None for the whole folder."""
        if shards is None and shard is None:
            return None
        if shards is None or shard is None:
            raise ShardError(
                "Expected --shards N and --shard I together (e.g. --shards 16 --shard 3). "
                f"Received: {'--shards' if shards is not None else '--shard'} alone."
            )
        return cls(int(shard), int(shards))

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "method": METHOD}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "the cache") -> Shard | None:
        """Read the ``shard`` attribute of a cache ("" for a whole-folder cache)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            if data.get("method") != METHOD:
                raise ValueError(f"method {data.get('method')!r}")
            index, count = data["index"], data["count"]
            if type(index) is not int or type(count) is not int:
                raise ValueError("index and count must be whole numbers")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ShardError(
                f"Expected a shard record like {{'index': 3, 'count': 16}} in {where}. Received: {err}."
            ) from None
        return cls(index, count)

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"

    def select(self, paths: Sequence[str]) -> np.ndarray:
        """A mask of the paths in this shard."""
        return shard_of(paths, self.count) == self.index
