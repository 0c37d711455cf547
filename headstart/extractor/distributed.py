"""Extraction on a Ray cluster: decoding as Ray tasks, the backbone in a pool of actors (Ray Data).

What lives here: connecting to Ray, the actor that runs the backbone, and `embed_stream`, which
yields finished batches in the same ``(indices, features, failed, sha256)`` form as the local
`headstart.extractor.embed.embed_stream`. What does not: deciding what to extract, and writing
the cache. The runner does both, in the one process that owns the HDF5 file, exactly as for a
local run: the cache, resume, skipped files and the fingerprint do not know Ray exists.

The pipeline is Ray Data's streaming batch inference::

    table of (index, path)  →  decode (CPU tasks)  →  backbone (actor pool, a GPU each if any)
                            →  iter_batches() on the driver (features only, a block at a time)

Ray Data's streaming executor backpressures every stage: it launches decoding only while the
object store has room and the actors keep up, and stops pulling when the driver stops
consuming, so the driver holds a few blocks of features at a time, never the whole run.
Actors are restarted by Ray when they die and their batches retried (Ray Data's default
``max_restarts=-1``); the driver drops an index it has already seen, so a retried batch is
never written twice, and raises if one never came back (the rows it got stay committed).

Ray is imported inside the functions: ``import headstart`` never needs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError, RayError
from headstart.settings.config import ExtractionConfig

log = logging.getLogger(__name__)

RAY_BATCH_AUTO = 256
"""Pictures per actor call with ``--batch-size auto``: the actor splits it into batches of the
size its own model chose (the largest that fits its GPU; 32 on a CPU)."""
DECODE_BLOCK = 64
"""Pictures per decoding task (at most; at least one ``--batch-size``)."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs the [data] extra (pyarrow, pandas)
    except ImportError as err:
        raise RayError(
            f"Expected Ray with Ray Data installed for --ray. Received: {err}. "
            "Install it with: pip install -e '.[ray]' in the headstart clone."
        ) from None
    return ray


def check_ray(address: str) -> None:
    """Before any work: Ray is installed, and a HOST:PORT address has something listening."""
    _import_ray()
    _check_reachable(address)


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:10001``, ``host:6379``) or start
    one on this machine (``local``); reuse the Ray this process already joined. Returns ``ray``."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if not address:
        raise RayError("Expected --ray ADDRESS, auto or local. Received: an empty address.")
    _check_reachable(address)
    verbose = log.isEnabledFor(logging.INFO)
    # The C++ core logs warnings meant for Ray developers to the driver's stderr; keep them in
    # Ray's log files unless asked for more output.
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict[str, Any] = dict(
        logging_level=logging.INFO if verbose else logging.ERROR,
        log_to_driver=verbose,
        # Workers must run the backend the fingerprint names; TensorFlow's C++ chatter stays quiet.
        runtime_env={"env_vars": _worker_env()},
    )
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as err:
        where = "start Ray on this machine" if address == "local" else f"connect to the Ray cluster at {address}"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RayError(
            f"Could not {where}: {first}. Start one with `ray start --head` (or pass --ray local), "
            "and check the address."
        ) from None
    log.info("Ray cluster: %s", ray.cluster_resources())
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT (or ray://HOST:PORT) nobody listens on: Ray itself retries
    for minutes before it gives up."""
    import socket

    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayError(f"Expected --ray auto, local, HOST:PORT or ray://HOST:PORT. Received: {address!r}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayError(
            f"Expected a Ray cluster listening at {address}. Received: {err.strerror or err} from {hostport}. "
            "Start it with `ray start --head` and check the address (`ray status` on the head node)."
        ) from None


def _worker_env() -> dict[str, str]:
    """Environment of this job's Ray workers: the driver's Keras backend (part of the fingerprint)."""
    import keras  # loaded already: the extraction config names the backend and Keras version

    return {
        "KERAS_BACKEND": keras.backend.backend(),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def cluster_gpus(address: str) -> int:
    """GPUs in the cluster at ``address`` (joining it if needed)."""
    ray = connect(address)
    return int(ray.cluster_resources().get("GPU", 0))


def _check_worker(config: ExtractionConfig) -> None:
    """Refuse to compute features that would not match the fingerprint on this node."""
    import keras

    from headstart.settings.config import file_sha256

    backend = keras.backend.backend()
    if backend != config.backend:
        raise RayError(
            f"Expected the Keras backend {config.backend} on every Ray worker. Received: {backend} on "
            f"{os.uname().nodename}. Set KERAS_BACKEND={config.backend} where the workers start."
        )
    if config.weights.startswith("sha256:"):
        path = config.weights_path
        if not path or not Path(path).is_file():
            raise RayError(
                f"Expected the weights file {path} on every Ray node. Received: no such file on "
                f"{os.uname().nodename}. Put it on a path that every node sees."
            )
        digest = file_sha256(path)
        if f"sha256:{digest}" != config.weights:
            raise RayError(
                f"Expected the weights file {path} with {config.weights} on every Ray node. "
                f"Received: sha256:{digest} on {os.uname().nodename}."
            )


def feature_dim(config: ExtractionConfig) -> int:
    """The length of the feature vector of ``config``: the model is built here once and dropped.

    The driver has Keras loaded anyway (the config names its version and backend); a Ray task
    would start a worker and import the framework just to learn one number.
    """
    import gc

    from headstart.extractor.model import build_model

    model = build_model(config)
    dim = int(model.output_shape[-1])
    del model
    gc.collect()
    return dim


def _decode_batch(
    batch: dict[str, np.ndarray],
    size: int,
    resize: str,
    draft: bool,
    resampler: str = "pillow-uint8",
    decoder: str = "pillow",
) -> dict[str, np.ndarray]:
    """Ray task: paths → pixels (zeros where a file could not be decoded), reasons ("" if fine) and
    the SHA-256 of each file's bytes (from the one read that decodes it)."""
    from headstart.extractor.decode import DecodeError, load_image_hashed

    n = len(batch["index"])
    pixels = np.zeros((n, size, size, 3), dtype=np.float32 if resampler == "float32" else np.uint8)
    reasons, digests = [], []
    for i, path in enumerate(batch["path"]):
        try:
            pixels[i], digest = load_image_hashed(str(path), (size, size), resize, draft, resampler, decoder)
            reasons.append("")
            digests.append(digest)
        except DecodeError as err:
            reasons.append(str(err))
            digests.append("")
    return {
        "index": np.asarray(batch["index"], dtype=np.int64),
        "pixels": pixels,
        "reason": np.array(reasons, dtype=object),
        "sha256": np.array(digests, dtype=object),
    }


class EmbedActor:
    """Ray actor (one per model replica): builds the backbone once, then embeds decoded batches."""

    def __init__(self, config: ExtractionConfig, batch_size: int | str):
        from headstart import tf_quiet
        from headstart.extractor.embed import Embedder

        tf_quiet.install()  # a worker process: TensorFlow's start-up lines stay out of the driver's log
        _check_worker(config)
        self.embedder = Embedder(config, batch_size)
        log.info("actor %d on %s: model built, batch %d", os.getpid(), os.uname().nodename, self.embedder.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reasons = batch["reason"]
        ok = np.flatnonzero(np.array([not r for r in reasons], dtype=bool))
        feats = np.zeros((len(reasons), self.embedder.dim), dtype=np.float32)
        step = self.embedder.batch_size
        for start in range(0, len(ok), step):
            rows = ok[start : start + step]
            feats[rows] = self.embedder([batch["pixels"][i] for i in rows])
        return {"index": batch["index"], "features": feats, "reason": reasons, "sha256": batch["sha256"]}


def _explain(err: Exception) -> HeadstartError:
    """A `HeadstartError` raised in a Ray worker, found inside Ray's wrapping; else a one-line `RayError`."""
    seen = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, HeadstartError):
            return type(cause)(*cause.args) if cause.args else cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return RayError(f"Ray could not run the extraction: {text}. What was extracted is kept; run again to resume.")


def _actor_resources(ray, workers: int) -> dict[str, float]:
    """A GPU per actor where the cluster has GPUs; on CPUs, leave a core for decoding tasks."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), float(total.get("CPU", 0))
    if gpus:
        if workers > gpus:
            raise RayError(
                f"Expected --workers at most the cluster's {gpus} GPUs (one model per GPU). Received: {workers}."
            )
        return {"num_gpus": 1, "num_cpus": min(1.0, max(cpus - 1, 0.0) / workers) if cpus > 1 else 0.0}
    if cpus < 2:
        raise RayError(f"Expected a Ray cluster with at least 2 CPUs (decoding and the model). Received: {cpus:g}.")
    return {"num_cpus": round(min(1.0, (cpus - 1) / workers), 4)}


def default_ray_workers(address: str) -> int:
    """One model per GPU in the cluster, else one per node."""
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus or max(1, sum(1 for n in ray.nodes() if n.get("Alive")))


def embed_stream(
    paths: Sequence[Path],
    config: ExtractionConfig,
    *,
    address: str,
    batch_size: int | str = 32,
    workers: int | None = None,
) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
    """Yield ``(indices, features, failed)`` as batches finish on the cluster, in any order.

    ``indices`` index ``paths``; ``failed`` is (index, reason) for pictures that could not be
    decoded. Each index comes back exactly once; if Ray loses some for good, the stream raises
    `RayError` after yielding everything else.
    """
    import pyarrow as pa

    ray = connect(address)
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise HeadstartError(f"Expected --batch-size of at least 1, or auto. Received: {batch_size}.")
    workers = workers or default_ray_workers(address)
    if workers < 1:
        raise HeadstartError(f"Expected --workers of at least 1. Received: {workers}.")
    resources = _actor_resources(ray, workers)
    ray_batch = RAY_BATCH_AUTO if batch_size == "auto" else batch_size
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own bar
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.ERROR)

    n = len(paths)
    # Enough blocks to keep every actor busy on a small run, at most DECODE_BLOCK pictures a task.
    block = max(1, min(DECODE_BLOCK, -(-n // (4 * workers))))
    tables = [
        pa.table(
            {
                "index": pa.array(range(lo, min(n, lo + block)), pa.int64()),
                "path": pa.array([str(p) for p in paths[lo : lo + block]], pa.string()),
            }
        )
        for lo in range(0, n, block)
    ]
    ds = ray.data.from_arrow(tables)
    ds = ds.map_batches(
        _decode_batch,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={
            "size": config.input_size,
            "resize": config.resize,
            "draft": config.jpeg_draft,
            "resampler": config.resampler,
            "decoder": config.decoder,
        },
        # The memory a task's pictures take once decoded. Besides helping Ray place the tasks, it
        # keeps Ray Data from fusing decoding into the model actors (it fuses operators whose
        # resource requests are equal; the GPU actor would then decode one picture after another).
        memory=block * config.input_size**2 * 3 * (8 if config.resampler == "float32" else 2),
    )
    ds = ds.map_batches(
        EmbedActor,
        batch_size=ray_batch,
        batch_format="numpy",
        fn_constructor_kwargs={"config": config, "batch_size": batch_size},
        compute=ray.data.ActorPoolStrategy(size=workers),
        **resources,
    )
    seen = np.zeros(n, dtype=bool)
    log.info("Ray: %d pictures, %d actors (%s each), batch %s", n, workers, resources, batch_size)
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            index = np.asarray(out["index"], dtype=np.int64)
            fresh = ~seen[index]
            if not fresh.all():
                log.info("dropped %d rows that a retried task sent again", int((~fresh).sum()))
            seen[index] = True
            reasons, feats = out["reason"], out["features"]
            ok = [i for i in np.flatnonzero(fresh) if not reasons[i]]
            bad = [(int(index[i]), str(reasons[i])) for i in np.flatnonzero(fresh) if reasons[i]]
            digests = [str(out["sha256"][i]) for i in ok]
            yield [int(index[i]) for i in ok], np.asarray(feats[ok], dtype=np.float32), bad, digests
    except ray.exceptions.RayError as err:
        raise _explain(err) from None
    except Exception as err:  # Ray Data re-raises worker errors as its own exception types
        if isinstance(err, HeadstartError) or not _from_ray(err):
            raise
        raise _explain(err) from None
    lost = int((~seen).sum())
    if lost:
        raise RayError(
            f"Expected every picture back from the Ray cluster. Received: {n - lost} of {n}. "
            "What came back is kept in the cache; run the same command again to extract the rest."
        )


def _from_ray(err: BaseException) -> bool:
    return type(err).__module__.startswith("ray.")
