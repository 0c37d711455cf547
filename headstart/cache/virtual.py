"""A merged cache's features read from its shards: checking that the shards are still the ones merged."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from headstart.cache.hdf5 import _check_schema, _open_any
from headstart.errors import CacheError

SOURCES_ATTR = "merged_from"
"""The attribute of a merged cache listing its shards (file relative to it, rows, created, last path)."""


def check_sources(f: h5py.File, path: Path) -> None:
    """Refuse a merged cache whose shards moved, vanished or changed since the merge (one line)."""
    again = "Put the shards back beside it, or merge them again (--copy makes one self-contained file)."
    try:
        sources = json.loads(f.attrs[SOURCES_ATTR])
        records = {s["file"]: s for s in sources}
        if not all(isinstance(s["file"], str) and type(s["rows"]) is int for s in sources):
            raise TypeError("file and rows")
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CacheError(
            f"Expected a merged cache with its list of shards ({SOURCES_ATTR}). Received: {path} ({err!s})."
        ) from None
    digest = f.attrs.get("fingerprint_digest", "")
    mapped = 0
    for vds in f["features"].virtual_sources():
        record = records.get(vds.file_name)
        if record is None or vds.dset_name != "features":
            raise CacheError(
                f"Expected features read from the recorded shards of {path}. Received: {vds.file_name}:{vds.dset_name}."
            )
        shard = path.parent / vds.file_name
        if not shard.is_file():
            raise CacheError(
                f"Expected the shard {vds.file_name} beside {path} (a merged cache reads its features from "
                f"its shards). Received: no such file. {again}"
            )
        try:
            with _open_any(shard) as s:
                _check_schema(s, shard)
                if s["features"].is_virtual:
                    raise CacheError("its features are themselves virtual")
                rows = int(s["progress"][0])
                same = (
                    rows == record["rows"]
                    and s.attrs.get("created") == record.get("created")
                    and s.attrs.get("fingerprint_digest") == digest
                    and s["features"].shape[0] >= rows
                    and (rows == 0 or s["paths"].asstr()[rows - 1] == record.get("last_path"))
                )
        except (CacheError, OSError, KeyError, ValueError) as err:
            raise CacheError(f"Cannot read the shard {shard} of the merged cache {path}: {err}. {again}") from None
        if not same:
            raise CacheError(
                f"Expected the shard {shard} as it was merged into {path} ({record['rows']} rows, created "
                f"{record.get('created')}). Received: a different file ({rows} rows). {again}"
            )
        mapped += record["rows"]
    if mapped != int(f["progress"][0]):
        raise CacheError(
            f"Expected {int(f['progress'][0])} rows of features in {path}. Received: {mapped} in its shards."
        )
