"""The HDF5 feature cache: writing extracted rows safely and reading them back."""

from headstart.cache.fingerprint import canonical_json, describe_diff, diff_settings, fingerprint_digest
from headstart.cache.store import (
    SCHEMA_VERSION,
    CacheHeader,
    CacheLock,
    CacheReader,
    CacheWriter,
    open_cache,
    rewrite,
)

__all__ = [
    "SCHEMA_VERSION",
    "CacheHeader",
    "CacheLock",
    "CacheReader",
    "CacheWriter",
    "canonical_json",
    "describe_diff",
    "diff_settings",
    "fingerprint_digest",
    "open_cache",
    "rewrite",
]
