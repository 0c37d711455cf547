"""Pictures to feature rows on this machine: the decoding threads, the `Embedder` (a built backbone), batches.

Used by `headstart.extractor.runner` (a folder into a cache), `headstart.extractor.distributed` (the
Ray actors) and predict (`embed_files`).
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.errors import HeadstartError
from headstart.extractor.decode import DecodeError, load_image_hashed
from headstart.settings.config import ExtractionConfig

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (a container's CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """One decoding thread per core (Pillow releases the GIL while decoding and resizing)."""
    return max(1, min(32, available_cores()))


def decode_stream(
    paths: Sequence[Path], config: ExtractionConfig, workers: int, prefetch: int
) -> Iterator[tuple[int, np.ndarray | None, str | None, str | None]]:
    """Decode ``paths`` in worker threads, ``prefetch`` pictures ahead; yields in input order
    ``(index, pixels, None, sha256)`` or ``(index, None, reason, None)``, ``sha256`` the hex digest
    of the file's bytes (hashed by the worker from the bytes it decodes). Memory is bounded by ``prefetch``."""
    size = (config.input_size, config.input_size)

    def work(path: Path):
        try:
            pixels, digest = load_image_hashed(
                path, size, config.resize, config.jpeg_draft, config.resampler, config.decoder
            )
            return pixels, None, digest
        except DecodeError as err:
            return None, str(err), None

    if workers < 1:
        raise HeadstartError(f"Expected --workers of at least 1. Received: {workers}.")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headstart-decode")
    try:
        pending: collections.deque[Future] = collections.deque()
        it = iter(enumerate(paths))
        for _i, p in it:
            pending.append(pool.submit(work, p))
            if len(pending) >= prefetch:
                break
        index = 0
        while pending:
            pixels, reason, digest = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(work, nxt[1]))
            yield index, pixels, reason, digest
            index += 1
    finally:
        # On Ctrl-C (or any early exit) do not wait for the pictures queued ahead.
        pool.shutdown(wait=False, cancel_futures=True)


class Embedder:
    """A built backbone that turns batches of pictures (uint8 or float32 pixels) into float32 feature rows.

    Every call runs a full batch of ``batch_size`` (the last one padded), so the compiled
    graph is traced once and a picture's features do not depend on which run it was in.
    """

    def __init__(self, config: ExtractionConfig, batch_size: int | str):
        from headstart.extractor.model import build_model
        from headstart.settings.backbones import preprocess_function

        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise HeadstartError(f"Expected --batch-size of at least 1, or auto. Received: {batch_size}.")
        self.config = config
        self.model = build_model(config)
        self.dim = int(self.model.output_shape[-1])
        self._preprocess = preprocess_function(config)
        self.batch_size = auto_batch_size(self.model, config) if batch_size == "auto" else batch_size
        size = config.input_size
        self._buffer = np.zeros((self.batch_size, size, size, 3), dtype=np.float32)

    def __call__(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        n = len(pixels)
        buf = self._buffer
        buf[n:] = 0
        for i, arr in enumerate(pixels):
            buf[i] = arr
        x = self._preprocess(buf)  # in place; every row of the buffer is refilled on each call
        out = self.model.predict_on_batch(x)
        return np.asarray(out, dtype=np.float32)[:n]


def _on_accelerator() -> bool:
    from headstart.extractor.options import has_accelerator

    return has_accelerator()


def auto_batch_size(model, config: ExtractionConfig, largest: int = 256, cpu_default: int = 32) -> int:
    """The largest power-of-two batch (up to ``largest``) that runs on the accelerator; on CPU,
    where memory is not the limit and bigger batches are no faster, ``cpu_default``."""
    if not _on_accelerator():
        log.info("batch size auto: %d (CPU)", cpu_default)
        return cpu_default
    size = config.input_size
    best, batch = 0, 16
    while batch <= largest:
        try:
            model.predict_on_batch(np.zeros((batch, size, size, 3), np.float32))
        except Exception as err:  # each backend has its own out-of-memory error
            text = str(err).lower()
            if "memory" not in text and "resource" not in text and "oom" not in text:
                raise
            break
        best, batch = batch, batch * 2
    if best == 0:
        raise HeadstartError("Expected the accelerator to fit a batch of 16 pictures. Received: out of memory.")
    # Where memory ran out, one step down leaves room for the rest of the run.
    chosen = best if best == largest else max(16, best // 2)
    log.info("batch size auto: %d (largest that ran: %d)", chosen, best)
    return chosen


def _embed(embedder: Embedder, pixels: list[np.ndarray]) -> np.ndarray:
    """Features of a batch; with ``views == "flip"`` the rows of the mirrored pictures follow (2n rows)."""
    feats = embedder(pixels)
    if embedder.config.views == "flip":
        feats = np.concatenate([feats, embedder([p[:, ::-1] for p in pixels])])
    return feats


def embed_stream(
    paths: Sequence[Path], embedder: Embedder, workers: int
) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]], list[str]]]:
    """Yield ``(indices, features, failed, sha256)`` batch by batch, ``failed`` as (index, reason),
    ``sha256`` the hex digest of each file in ``indices``. With ``views == "flip"`` features has
    ``2 * len(indices)`` rows: the pictures', then their mirrors'."""
    batch_idx: list[int] = []
    batch_px: list[np.ndarray] = []
    batch_sha: list[str] = []
    failed: list[tuple[int, str]] = []
    prefetch = max(2 * embedder.batch_size, 4 * workers)
    for index, pixels, reason, digest in decode_stream(paths, embedder.config, workers, prefetch):
        if pixels is None:
            failed.append((index, reason))
            continue
        batch_idx.append(index)
        batch_px.append(pixels)
        batch_sha.append(digest)
        if len(batch_idx) == embedder.batch_size:
            yield batch_idx, _embed(embedder, batch_px), failed, batch_sha
            batch_idx, batch_px, failed, batch_sha = [], [], [], []
    if batch_idx or failed:
        feats = _embed(embedder, batch_px) if batch_px else np.zeros((0, embedder.dim), np.float32)
        yield batch_idx, feats, failed, batch_sha


@dataclass
class EmbedResult:
    """Features of pictures given one by one (for `predict`): rows follow ``ok``; ``flipped``: the
    mirrored pictures' rows when the config has ``views == "flip"``, else None."""

    features: np.ndarray
    ok: list[Path]
    failed: list[tuple[Path, str]] = field(default_factory=list)
    flipped: np.ndarray | None = None


def embed_files(
    files: Sequence[str | os.PathLike],
    config: ExtractionConfig,
    batch_size: int | str = 32,
    workers: int | None = None,
) -> EmbedResult:
    """Features of ``files`` with the backbone and settings of ``config``; unreadable files are listed."""
    files = [Path(f) for f in files]
    if isinstance(batch_size, int):  # a handful of pictures should not pay for a full batch
        batch_size = max(1, min(batch_size, len(files)))
    embedder = Embedder(config, batch_size)
    feats, flips, ok, failed = [], [], [], []
    for idx, f, bad, _ in embed_stream(files, embedder, workers or default_workers()):
        feats.append(f[: len(idx)])
        flips.append(f[len(idx) :])
        ok.extend(files[i] for i in idx)
        failed.extend((files[i], reason) for i, reason in bad)
    empty = np.zeros((0, embedder.dim), np.float32)
    features = np.concatenate(feats) if feats else empty
    flipped = (np.concatenate(flips) if flips else empty) if config.views == "flip" else None
    return EmbedResult(features=features, ok=ok, failed=failed, flipped=flipped)
