"""The merge command of the CLI: join the caches of a folder's shards into one cache, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from headstart.cli.console import cli_errors, fail, say


def merge_cmd(
    shards: list[Path] = typer.Argument(..., help="The caches to merge (e.g. part-*.h5)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The merged cache to write."),
    copy: bool = typer.Option(
        False,
        "--copy",
        help="Write one self-contained file (copies the features) instead of a virtual cache "
        "that reads them from the shards.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a headstart cache already."),
    partial: bool = typer.Option(
        False, "--partial", help="Merge even if some shards of the --shards count are missing."
    ),
    root: Optional[Path] = typer.Option(
        None, help="The picture folder the merged cache refers to, when the shards saw it at different paths."
    ),
) -> None:
    """Join caches extracted with --shards N --shard I into one cache, after checking that they fit:
    same settings and classes, every shard once and complete, no picture twice.

    By default OUT reads its features from the shards (an HDF5 virtual dataset, nothing copied): keep the shards where they are. --copy writes one self-contained file instead.

    Example: headstart merge part-*.h5 --out catalog.h5
    """
    from headstart.cache.merge import merge

    if out is None:  # the form before --out: merge OUT SHARDS... (kept for one release)
        if len(shards) < 2:
            raise fail("Expected --out, the merged cache to write: headstart merge SHARDS... --out OUT.")
        out, shards = shards[0], shards[1:]
        say(
            f"Deprecated: 'headstart merge OUT SHARDS...' will go in the next release; "
            f"write 'headstart merge SHARDS... --out {out}'.",
            err=True,
        )

    with cli_errors(f"Interrupted. Nothing was written to {out}; run the same command again."):
        from headstart.settings.config import check_cache_settings

        check_cache_settings(*shards)
        res = merge(out, shards, copy=copy, overwrite=overwrite, partial=partial, root=root)
    kind = (
        f"features read from the {res.inputs} caches merged: keep them where they are"
        if res.virtual
        else "a self-contained copy"
    )
    say(f"Merged {res.inputs} caches: {res.rows} rows, {res.skipped} skipped, into {out} ({kind})")


def register(app: typer.Typer) -> None:
    """Add the merge command to ``app``."""
    app.command("merge")(merge_cmd)
