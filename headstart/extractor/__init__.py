"""Extraction: a folder of pictures to feature rows in a cache (scan, decode, backbone, write)."""
