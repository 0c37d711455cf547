"""The extraction runner: scan → decode (worker threads) → backbone → cache, resumable."""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from headstart.cache import CacheHeader, CacheLock, CacheWriter, describe_diff, diff_settings, open_cache
from headstart.errors import CacheMismatchError, DatasetError, HeadstartError, RayError
from headstart.extractor.config import ExtractionConfig
from headstart.extractor.decode import DecodeError, load_image_hashed
from headstart.extractor.scan import scan_dataset

log = logging.getLogger(__name__)

COMMIT_SECONDS = 1.0
"""Staged rows are made durable at most this often: a crash loses at most about a second of work."""

Progress = Callable[[int, int, int], None]
"""progress(done, total, skipped): pictures handled so far in this run, to handle, skipped so far."""


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
            pixels, digest = load_image_hashed(path, size, config.resize, config.jpeg_draft, config.resampler)
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
        from headstart.extractor.backbones import build_model, preprocess_function

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
    from headstart.extractor.backbones import has_accelerator

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


@dataclass
class ExtractResult:
    """What one `extract` call did."""

    cache: Path
    extracted: int
    skipped: int
    already: int
    pruned: int
    total_rows: int
    seconds: float
    failed: list[tuple[str, str]]
    complete: bool
    batch_size: int | str = 32
    loop_seconds: float = 0.0  # from the first picture to the last, without start-up
    skipped_links: tuple[tuple[str, str], ...] = ()  # links to folders not followed (loops, repeats)
    moved_from: str | None = None  # the cache's old root, when --root-moved updated it

    @property
    def pictures_per_second(self) -> float:
        """Pictures handled per second of the extraction loop (model build and start-up excluded)."""
        return (self.extracted + self.skipped) / self.loop_seconds if self.loop_seconds > 0 else 0.0

    @property
    def setup_seconds(self) -> float:
        return self.seconds - self.loop_seconds


def _check_existing(
    out: Path, config: ExtractionConfig, class_names: Sequence[str], root: str | None = None, root_moved: bool = False
) -> tuple[int, list[str]]:
    """Refuse a cache made with other settings or classes, or from another folder (unless the
    pictures moved); else its feature size and classes."""
    with open_cache(out) as cache:
        diff = diff_settings(cache.fingerprint, config.fingerprint())
        if diff:
            hint = (
                f" The backend comes from KERAS_BACKEND: set KERAS_BACKEND={diff['backend'][0]} to resume."
                if "backend" in diff
                else ""
            )
            raise CacheMismatchError(
                f"{out} was extracted with other settings: {describe_diff(diff)}. "
                f"Use the same options to resume, another --out, or --overwrite to start again.{hint}"
            )
        new = sorted(set(class_names) - set(cache.class_names))
        if new:
            raise CacheMismatchError(
                f"Expected the classes of {out} ({', '.join(cache.class_names)}). Received new classes: "
                f"{', '.join(new)}. Pass --exclude for them, or --overwrite to extract everything again."
            )
        if root is not None and cache.root != root and not root_moved:
            raise CacheMismatchError(
                f"Expected the folder {out} was extracted from ({cache.root}). Received: {root}. "
                "If the pictures moved there, pass --root-moved; else use another --out."
            )
        return cache.dim, list(cache.class_names)


def _check_replaceable(out: Path) -> None:
    """``--overwrite`` replaces a cache, broken or not, but never a file that is not HDF5 at all."""
    import h5py

    if out.is_dir() or (out.stat().st_size and not h5py.is_hdf5(out)):
        raise DatasetError(
            f"Expected --out to name a feature cache to replace. Received: {out} (not an HDF5 file); "
            "headstart replaces only its own files: choose another --out or remove it yourself."
        )


def _printable(rel: str) -> str | None:
    """``rel`` if it can be stored as UTF-8, else None (a file name with undecodable bytes)."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return None


def _prune(writer: CacheWriter, root: Path, exclude_paths: Collection[str] = ()) -> int:
    keep = np.array([(root / p).exists() and p not in exclude_paths for p in writer.paths()], dtype=bool)
    gone = int((~keep).sum())
    if gone:
        writer.keep_rows(keep)
        log.info("pruned %d rows whose pictures are gone", gone)
    return gone


def extract(
    source: str | os.PathLike,
    out: str | os.PathLike,
    config: ExtractionConfig | None = None,
    *,
    batch_size: int | str = 32,
    workers: int | None = None,
    exclude: Iterable[str] = (),
    limit_per_class: int | None = None,
    overwrite: bool = False,
    prune: bool = False,
    root_moved: bool = False,
    progress: Progress | None = None,
    commit_seconds: float = COMMIT_SECONDS,
    embedder: Embedder | None = None,
    ray: str | None = None,
    shards: int | None = None,
    shard: int | None = None,
    exclude_paths: Collection[str] = (),
) -> ExtractResult:
    """Extract features of every picture under ``source`` into the cache ``out``.

    Resumes (or updates) an existing cache made with the same ``config``; refuses one made
    with other settings unless ``overwrite``, and one made from another folder unless
    ``root_moved`` (the pictures moved: the cache's root is then updated; rows are matched by
    their path relative to the root). Unreadable pictures are recorded, not fatal.
    Rows become durable at least every ``commit_seconds`` (and at the end, and on Ctrl-C).
    ``embedder``: an `Embedder` already built for ``config`` (to extract several folders with one
    model); by default one is built here, and only if there is something to extract.
    ``ray``: run decoding and the model on the Ray cluster at this address (``auto``,
    ``ray://host:10001``, or ``local``); `headstart.extractor.distributed` explains how.
    ``shards``, ``shard``: extract only shard ``shard`` (from 0) of ``shards``, chosen by a hash of
    each relative path (`headstart.extractor.shards`); the cache records it.
    ``exclude_paths``: relative paths not to extract (``--exclude-list``); with ``prune``, rows
    already in the cache for them are dropped too.
    """
    from headstart.extractor.backbones import make_config
    from headstart.extractor.shards import Shard

    t0 = time.perf_counter()
    source, out = Path(source), Path(out)
    if not (isinstance(commit_seconds, (int, float)) and math.isfinite(commit_seconds) and commit_seconds >= 0):
        raise HeadstartError(f"Expected --commit-seconds of 0 or more. Received: {commit_seconds}.")
    if workers is not None and workers < 1:
        raise HeadstartError(f"Expected --workers of at least 1. Received: {workers}.")
    config = config or (embedder.config if embedder else make_config())
    if embedder is not None and embedder.config != config:
        raise HeadstartError("Expected an embedder built for the same extraction config as the one given.")
    part = Shard.from_options(shards, shard)
    if ray:
        from headstart.extractor import distributed

        if config.views == "flip":
            raise RayError(
                "Expected --views none with --ray: flipped views run on one machine only for now. "
                "Extract with --views flip without --ray, or shard the folder (--shards N --shard I)."
            )
        distributed.check_ray(ray)  # fail in seconds, before the cache is touched
    dataset = scan_dataset(source, exclude=exclude, limit_per_class=limit_per_class)
    if part is not None:
        keep = part.select([rel for rel, _ in dataset.items])
        dataset = replace(dataset, items=tuple(it for it, k in zip(dataset.items, keep) if k))
        log.info("%s: %d pictures", part, len(dataset))
    if out.exists() and out.is_dir():
        raise DatasetError(f"Expected --out to be a file path. Received: {out} (a folder).")
    if out.is_symlink() and not out.exists():
        raise DatasetError(
            f"Expected --out to be a file path. Received: {out} (a symbolic link to nothing, or a loop)."
        )
    # The cache is checked under the writer lock, which the writer then keeps: no other process
    # can create or change it between the check of its settings and our first row.
    lock = CacheLock(out).acquire()
    try:
        header_probe = None
        # The header needs the feature size; reuse the cache's when resuming, else build the model.
        if out.exists() and not overwrite:
            header_probe = _check_existing(out, config, dataset.class_names, str(source.resolve()), root_moved)
        elif out.exists():
            _check_replaceable(out)
        if header_probe is None and ray:
            from headstart.extractor import distributed

            header_probe = (distributed.feature_dim(config), list(dataset.class_names))
        if header_probe is None:
            embedder = embedder or Embedder(config, batch_size)
            header_probe = (embedder.dim, list(dataset.class_names))
        dim, class_names = header_probe
        header = CacheHeader(
            dim=dim,
            dtype=config.dtype,
            fingerprint=config.fingerprint(),
            class_names=tuple(class_names),
            root=str(source.resolve()),
            weights_path=config.weights_path,
            row_datasets=("sha256", "view") if config.views == "flip" else ("sha256",),
            shard=part.to_json() if part else "",
        )
        label_map = [class_names.index(name) for name in dataset.class_names]
    except BaseException:
        lock.release()
        raise
    with CacheWriter(out, header, overwrite=overwrite, lock=lock) as writer:
        moved_from = writer.set_root(header.root) if root_moved else None
        pruned = _prune(writer, source, exclude_paths) if prune else 0
        done = writer.done_paths()
        todo, failed = [], []
        excluded = 0
        for rel, label in dataset.items:
            if _printable(rel) is None:  # HDF5 stores UTF-8 only: record it under a readable name
                shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                if shown not in done:
                    failed.append((shown, "file name is not valid UTF-8; rename the file"))
            elif rel in exclude_paths:
                excluded += 1
            elif rel not in done:
                todo.append((rel, label_map[label]))
        already = len(dataset) - len(todo) - len(failed) - excluded
        if excluded:
            log.info("left out %d pictures listed to exclude", excluded)
        total = len(todo)
        if already:
            log.info("%d pictures already in %s; %d to extract", already, out, total)
        extracted = 0
        writer.add_failed(failed)
        if progress:
            progress(0, total, 0)
        if todo:
            paths = [source / rel for rel, _ in todo]
            if ray:
                from headstart.extractor import distributed

                stream = distributed.embed_stream(paths, config, address=ray, batch_size=batch_size, workers=workers)
            else:
                embedder = embedder or Embedder(config, batch_size)
                stream = embed_stream(paths, embedder, workers or default_workers())
            handled = 0
            t_loop = last_commit = time.perf_counter()
            for idx, feats, bad, digests in stream:
                if ray and not handled:  # the cluster's start-up (actors building the model) is not the loop
                    t_loop = time.perf_counter()
                labels, rels = [todo[i][1] for i in idx], [todo[i][0] for i in idx]
                if config.views == "flip":  # both rows of a picture are committed together
                    writer.append(
                        feats, labels * 2, rels * 2, view=[0] * len(idx) + [1] * len(idx), sha256=list(digests) * 2
                    )
                else:
                    writer.append(feats, labels, rels, sha256=digests)
                bad_items = [(todo[i][0], reason) for i, reason in bad]
                writer.add_failed(bad_items)
                if time.perf_counter() - last_commit >= commit_seconds:
                    writer.commit()
                    last_commit = time.perf_counter()
                for rel, reason in bad_items:
                    log.warning("skipped %s: %s", rel, reason)
                failed.extend(bad_items)
                extracted += len(idx)
                handled += len(idx) + len(bad)
                if progress:
                    progress(handled, total, len(failed))
            loop_seconds = time.perf_counter() - t_loop
        else:
            loop_seconds = 0.0
        writer.close(complete=True)
        total_rows = writer.rows
    seconds = time.perf_counter() - t0
    result = ExtractResult(
        cache=out,
        extracted=extracted,
        skipped=len(failed),
        already=already,
        pruned=pruned,
        total_rows=total_rows,
        seconds=seconds,
        failed=failed,
        complete=True,
        batch_size=embedder.batch_size if embedder else batch_size,
        loop_seconds=loop_seconds,
        skipped_links=dataset.skipped_links,
        moved_from=moved_from,
    )
    log.info(
        "extracted %d, skipped %d in %.1f s (%.1f pictures/s)",
        extracted,
        len(failed),
        seconds,
        result.pictures_per_second,
    )
    return result
