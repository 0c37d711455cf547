"""The extraction runner: scan → decode (worker threads) → backbone → cache, resumable."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from headstart.cache import CacheHeader, CacheLock, CacheWriter, describe_diff, diff_settings, open_cache
from headstart.cache.merge import make_self_contained
from headstart.errors import CacheMismatchError, DatasetError, HeadstartError, RayError
from headstart.extractor.embed import Embedder, default_workers, embed_stream
from headstart.extractor.scan import scan_dataset
from headstart.settings.config import ExtractionConfig

log = logging.getLogger(__name__)

COMMIT_SECONDS = 1.0
"""Staged rows are made durable at most this often: a crash loses at most about a second of work."""

Progress = Callable[[int, int, int], None]
"""progress(done, total, skipped): pictures handled so far in this run, to handle, skipped so far."""


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
    each relative path (`headstart.cache.shards`); the cache records it.
    ``exclude_paths``: relative paths not to extract (``--exclude-list``); with ``prune``, rows
    already in the cache for them are dropped too.
    """
    from headstart.cache.shards import Shard
    from headstart.extractor.options import make_config

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
        if out.exists() and not overwrite:
            make_self_contained(out)  # a merged cache cannot grow: its features come in first
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
