"""A run folder ready to embed new pictures: the `ExtractionConfig` of its cache, with the weights file checked.

Reading the run folder itself (head, class names) is `headstart.heads.run_reader.load_run`; this
adds what needs the extractor, for predict and export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headstart.errors import CacheMismatchError, HeadstartError, RunError
from headstart.settings.config import ExtractionConfig, file_sha256
from headstart.settings.hub import folder_digest


def _weights_path(info: Mapping[str, Any], weights: str | os.PathLike | None) -> str | None:
    """The weights file for the run's backbone, checked against the fingerprint's SHA-256.

    Without ``weights``, the file the cache was extracted from, where it still is."""
    if weights is None:
        recorded = info["cache"].get("weights_path")
        if not recorded:
            return None
        if not Path(recorded).exists():
            raise RunError(
                f"Expected the weights file the cache was extracted with at {recorded}. "
                "Received: no such file; pass it with --weights PATH."
            )
        weights = recorded
    path = Path(weights).expanduser()
    if path.is_dir():  # a KerasHub preset folder
        got = folder_digest(path)
        expected = str(info["cache"]["fingerprint"].get("weights", ""))
        if got != expected:
            raise CacheMismatchError(
                f"Expected the preset folder the run's cache was extracted with ({expected[:23]}...). "
                f"Received: {path} ({got[:23]}...)."
            )
        return str(path.resolve())
    if not path.is_file():
        raise RunError(f"Expected --weights to be a weights file. Received: {path} (no such file).")
    expected = str(info["cache"]["fingerprint"].get("weights", ""))
    if not expected.startswith("sha256:"):
        raise RunError(f"The run's backbone uses weights {expected!r}, not a file; leave out --weights.")
    got = f"sha256:{file_sha256(path)}"
    if got != expected:
        raise CacheMismatchError(
            f"Expected the weights file the run's cache was extracted with ({expected[:23]}...). "
            f"Received: {path} ({got[:23]}...)."
        )
    return str(path.resolve())


def run_config(info: Mapping[str, Any], run_dir: str | os.PathLike, weights: str | os.PathLike | None = None):
    """The `ExtractionConfig` of a run's cache, with the weights file checked (see `_weights_path`)."""
    weights_path = _weights_path(info, weights)
    try:
        return ExtractionConfig.from_fingerprint(info["cache"]["fingerprint"], weights_path=weights_path)
    except HeadstartError as err:
        raise RunError(
            f"Expected extraction settings that headstart knows in {Path(run_dir) / 'run.json'}. Received: {err}"
        ) from None
