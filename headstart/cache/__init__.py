"""The HDF5 feature cache: writing extracted rows safely and reading them back."""

from headstart.cache.fingerprint import canonical_json, describe_diff, diff_settings, fingerprint_digest
from headstart.cache.hdf5 import SCHEMA_VERSION, rewrite
from headstart.cache.lock import CacheLock
from headstart.cache.reader import CacheReader, open_cache
from headstart.cache.writer import CacheHeader, CacheWriter

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
