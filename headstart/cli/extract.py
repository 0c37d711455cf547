"""The extraction commands of the CLI (download, extract, info): parse options, call the library, print.

`register(app)` adds them to a typer app, as every ``headstart/cli/<group>.py`` module does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from headstart.cli.console import cli_errors, err_console, fail, out_console, say
from headstart.errors import HeadstartError
from headstart.settings.backbones import BACKBONES
from headstart.settings.config import MAX_INPUT_SIZE, MIN_INPUT_SIZE, PRECISIONS, RESIZE_METHODS, STORAGE_DTYPES


def download(
    dataset: str = typer.Argument(..., help="Which dataset: 'pets' (Microsoft Dogs vs Cats, 786 MB)."),
    dest: Optional[Path] = typer.Argument(None, hidden=True, help="Deprecated: use --out."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to put PetImages/ in (default: data)."),
    url: Optional[str] = typer.Option(None, help="Download from this URL instead of Microsoft's."),
    archive: Optional[Path] = typer.Option(None, help="Unpack this already-downloaded zip instead."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a dataset and unpack it; an interrupted download resumes.

    Example: headstart download pets --out data/   (then: headstart extract data/PetImages --out pets.h5)
    """
    from headstart.download import PETS_URL, download_pets

    if dataset != "pets":
        raise fail(f"Expected a dataset name among: pets. Received: {dataset!r}.")
    if dest is not None:  # the form before --out: download pets DEST (kept for one release)
        if out is not None:
            raise fail(f"Expected the folder once, as --out. Received: {dest} and --out {out}.")
        say(
            f"Deprecated: 'headstart download pets DEST' will go in the next release; "
            f"write 'headstart download pets --out {dest}'.",
            err=True,
        )
    dest = out or dest or Path("data")
    with cli_errors("Interrupted. Run the same command to resume the download."):
        with _progress(quiet, bytes_=True) as bar:
            task = bar.add_task("download", total=None) if bar else None

            def progress(done: int, total: Optional[int]) -> None:
                if bar:
                    bar.update(task, completed=done, total=total)

            folder = download_pets(dest, url=url or PETS_URL, progress=progress, archive=archive)
    say(f"Pictures are in {folder}")


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(quiet: bool, bytes_: bool = False):
    """A rich progress bar on a terminal (stderr); nothing when quiet or not a terminal."""
    if quiet or not err_console.is_terminal:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if bytes_:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
    else:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:>6.1f} pictures/s"),
            TextColumn("skipped {task.fields[skipped]}"),
            TimeRemainingColumn(),
        ]
    return Progress(*columns, console=err_console, transient=False)


def _layers_help() -> str:
    """The feature layers of every backbone, from the registry (the default one first)."""
    per = "; ".join(
        f"{name}: "
        + ", ".join([spec.default_layer + " (default)"] + [n for n in spec.layers if n != spec.default_layer])
        for name, spec in BACKBONES.items()
    )
    return f"Feature layer of the backbone. {per}."


def _alpha_help() -> str:
    widths = [f"{name}: {', '.join(map(str, spec.alphas))}" for name, spec in BACKBONES.items() if spec.alphas]
    return f"Width of the backbones that have one ({'; '.join(widths)}; default 1.0)."


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise HeadstartError(f"Expected --batch-size to be a whole number of at least 1, or auto. Received: {text}.")
    return value


def extract(
    source: Path = typer.Argument(..., help="Folder with one sub-folder per class, e.g. PetImages/."),
    out: Path = typer.Option(..., "--out", "-o", help="The HDF5 cache to write (created, resumed or updated)."),
    backbone: str = typer.Option(
        "vgg16", help=f"Backbone, one of: {', '.join(BACKBONES)}; or hub:PRESET (KerasHub: the hub extra)."
    ),
    layer: Optional[str] = typer.Option(None, help=_layers_help()),
    weights: str = typer.Option(
        "imagenet",
        help="imagenet (Keras downloads them once), none (random, seeded), bundled (MobileNet 0.25's, shipped "
        "with headstart: no download; with --backbone mobilenet --alpha 0.25), or a local .h5 file.",
    ),
    alpha: Optional[float] = typer.Option(None, help=_alpha_help()),
    input_size: Optional[int] = typer.Option(
        None, help=f"Input side in pixels, {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} (default: the backbone's)."
    ),
    resize: str = typer.Option(
        "squash", help=f"One of: {', '.join(RESIZE_METHODS)} (squash: both sides, like keras load_img; crop: centre)."
    ),
    precision: str = typer.Option(
        "auto",
        help=f"One of: auto, {', '.join(PRECISIONS)}. auto: float16 on a GPU; on a CPU bfloat16 for "
        f"{', '.join(n for n, s in BACKBONES.items() if s.cpu_bfloat16) or 'none'} where the CPU has native "
        "bfloat16, else float32.",
    ),
    dtype: str = typer.Option("float16", help=f"Storage type of the features, one of: {', '.join(STORAGE_DTYPES)}."),
    views: str = typer.Option(
        "none",
        help="none, or flip: also store each picture's horizontal mirror (heads train on both; "
        "evaluate and predict average them).",
    ),
    batch_size: str = typer.Option(
        "32", help="Pictures per model call, or auto (the largest that fits a GPU; 32 on CPU)."
    ),
    workers: Optional[int] = typer.Option(
        None,
        help="Decoding threads, at least 1 (default: one per CPU core); with --ray, model actors (default: one "
        "per GPU of the cluster, else one per node).",
    ),
    exclude: list[str] = typer.Option([], "--exclude", help="Leave out this class (repeatable)."),
    limit_per_class: Optional[int] = typer.Option(
        None, help="At most N pictures per class, N at least 1 (the first N, sorted)."
    ),
    seed: int = typer.Option(0, help="Seed of --weights none."),
    draft: bool = typer.Option(
        False,
        "--draft/--no-draft",
        help="--draft: decode large JPEGs at a reduced scale (faster; the exported model, which gets the whole "
        "picture, then sees other pixels). Default --no-draft: full size, the same pixels everywhere.",
    ),
    resampler: str = typer.Option(
        "float32",
        "--resampler",
        help="float32: resize on float pixels, as the exported model's Keras Resizing layer does (the same "
        "pixels in extract, predict and export); pillow-uint8: Pillow on 8-bit pixels, rounded, as caches made "
        "before headstart recorded it (to resume those).",
    ),
    decoder: str = typer.Option(
        "pillow",
        "--decoder",
        help="pillow, or simplejpeg: JPEGs decoded by libjpeg-turbo without Pillow's copies (the same pixels on "
        "the tested pictures, less CPU on large photos; recorded in the cache, which keeps its decoder). "
        "Needs pip install -e '.[fastjpeg]'.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start a new cache even if OUT exists with other settings."
    ),
    prune: bool = typer.Option(False, "--prune", help="Drop rows whose pictures are no longer in SOURCE."),
    root_moved: bool = typer.Option(
        False,
        "--root-moved",
        help="OUT was extracted from another folder and the pictures moved to SOURCE: "
        "match rows by their relative path and record SOURCE as the cache's folder.",
    ),
    commit_seconds: float = typer.Option(
        1.0,
        help="Make extracted rows durable at least this often (0 or more seconds); a crash loses at most "
        "this much work.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        help="Run on a Ray cluster: auto (the one this machine joined), ray://HOST:10001, HOST:6379, "
        "or local (start one here). Decoding runs as Ray tasks, the model in --workers actors (one per GPU "
        "by default). Needs pip install -e '.[ray]' in the headstart clone.",
    ),
    shards: Optional[int] = typer.Option(
        None, "--shards", help="Split the folder into N shards by a hash of each picture's path (with --shard)."
    ),
    shard: Optional[int] = typer.Option(
        None, "--shard", help="Extract only shard I (0 to N-1) into OUT; join the shards with headstart merge."
    ),
    exclude_list: Optional[Path] = typer.Option(
        None,
        "--exclude-list",
        help="Do not extract the pictures listed in this file, one relative path a line "
        "(with --prune, drop their rows too).",
    ),
) -> None:
    """Run the backbone once over every picture and store the features in an HDF5 cache.

    Running it again resumes an interrupted extraction, or adds pictures new in SOURCE.

    Example: headstart extract PetImages/ --out pets-vgg16-fc2.h5

    On a Ray cluster: headstart extract /mnt/pictures --out catalog.h5 --ray auto

    One shard of 16 (any scheduler): headstart extract /mnt/pictures --out part-3.h5 --shards 16 --shard 3
    """
    from headstart.exclude_list import read_exclude_list
    from headstart.extractor.options import make_config
    from headstart.extractor.runner import extract as run_extract

    interrupted = f"Interrupted. What was extracted is kept in {out}; run the same command to resume."
    with cli_errors(interrupted):
        batch = _batch_size(batch_size)
        if ray and precision == "auto":
            from headstart.extractor.distributed import cluster_gpus

            precision = "float16" if cluster_gpus(ray) else precision  # auto means float16 on GPUs
        config = make_config(
            backbone,
            layer,
            weights=weights,
            alpha=alpha,
            input_size=input_size,
            resize=resize,
            jpeg_draft=draft,
            resampler=resampler,
            decoder=decoder,
            precision=precision,
            dtype=dtype,
            seed=seed,
            views=views,
        )
        with _progress(quiet) as bar:
            task = bar.add_task("extract", total=None, rate=0.0, skipped=0) if bar else None
            import time

            t0 = time.perf_counter()

            def progress(done: int, total: int, skipped: int) -> None:
                if bar:
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=done, total=total, rate=rate, skipped=skipped)

            result = run_extract(
                source,
                out,
                config,
                batch_size=batch,
                workers=workers,
                exclude=exclude,
                limit_per_class=limit_per_class,
                overwrite=overwrite,
                prune=prune,
                progress=progress,
                commit_seconds=commit_seconds,
                root_moved=root_moved,
                ray=ray,
                shards=shards,
                shard=shard,
                exclude_paths=read_exclude_list(exclude_list).paths if exclude_list is not None else (),
            )
    skipped = f", skipped {result.skipped} (see: headstart info {out})" if result.skipped else ", skipped 0"
    already = f", {result.already} already there" if result.already else ""
    pruned = f", pruned {result.pruned}" if result.pruned else ""
    links = len(result.skipped_links)
    pruned += f", {links} link{'s' if links > 1 else ''} to folders not followed (loops or repeats)" if links else ""
    say(
        f"Extracted {result.extracted}{skipped}{already}{pruned} in {result.seconds:.1f} s "
        f"({result.pictures_per_second:.1f} pictures/s after {result.setup_seconds:.1f} s of start-up, "
        f"batch {result.batch_size}); {result.total_rows} rows in {out}"
    )
    if result.moved_from:
        say(f"The cache's folder is now {source.resolve()} (was {result.moved_from})")


def info(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    root: Optional[Path] = typer.Option(None, help="Check for vanished pictures under this folder instead."),
) -> None:
    """Describe a cache: rows, classes, feature shape, settings, skipped files, completeness.

    Example: headstart info pets-vgg16-fc2.h5 --json
    """
    from headstart.cache import open_cache
    from headstart.settings.config import config_of

    with cli_errors():
        if root is not None and not root.is_dir():
            raise fail(
                f"Expected --root to be the folder of the pictures. Received: {root} "
                f"({'not a folder' if root.exists() else 'no such folder'})."
            )
        with open_cache(cache) as c:
            config_of(c)  # every setting from this version's registries
            missing = c.missing_files(root)
            data = {
                "path": str(cache),
                "rows": len(c),
                "classes": c.counts(),
                "feature_shape": [len(c), c.dim],
                "dtype": str(c.dtype),
                "complete": c.complete,
                "fingerprint": c.fingerprint,
                "fingerprint_digest": c.fingerprint_digest,
                "root": c.root,
                "created": c.created,
                "versions": c.versions,
                "skipped": [{"path": p, "reason": r} for p, r in c.failed],
                "vanished": missing,
                "size_bytes": c.size_bytes(),
                "schema_version": c.schema_version,
                "shard": _shard_record(c.shard, cache),
            }
    if as_json:
        out_console.print_json(json.dumps(data))
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(show_header=False, box=None)
    row = lambda name, value: t.add_row(name, Text(str(value)))  # noqa: E731 - values may hold [ ]
    row("cache", data["path"])
    row("rows", f"{data['rows']} ({'complete' if data['complete'] else 'INCOMPLETE: run extract again to resume'})")
    row("classes", ", ".join(f"{k} {v}" for k, v in data["classes"].items()))
    row("features", f"{data['rows']} x {data['feature_shape'][1]} {data['dtype']}")
    row("size", f"{data['size_bytes'] / 2**20:.1f} MiB")
    row("root", data["root"])
    row("created", data["created"])
    fp = data["fingerprint"]
    row("settings", ", ".join(f"{k}={v}" for k, v in fp.items() if v is not None))
    if data["shard"]:
        row("shard", f"{data['shard']['index']} of {data['shard']['count']} (join the shards: headstart merge)")
    row("skipped", str(len(data["skipped"])))
    row("vanished", str(len(missing)) + (" (drop them: extract --prune)" if missing else ""))
    out_console.print(t, soft_wrap=True)
    for item in data["skipped"]:
        say(f"  skipped {item['path']}: {item['reason']}")
    for path in missing[:20]:
        say(f"  vanished {path}")
    if len(missing) > 20:
        say(f"  ... and {len(missing) - 20} more (--json lists all)")


def _shard_record(text: str, cache: Path) -> Optional[dict]:
    """The shard a cache holds, checked, as a dict; None for a whole-folder cache."""
    from headstart.cache.shards import Shard

    part = Shard.from_json(text, str(cache))
    return json.loads(part.to_json()) if part else None


def register(app: typer.Typer) -> None:
    """Add download, extract and info to ``app``."""
    app.command("download")(download)
    app.command("extract")(extract)
    app.command("info")(info)
