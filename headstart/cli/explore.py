"""The exploring commands of the CLI (similar): parse, call, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from headstart.cli.console import cli_errors, say


def similar_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    queries: list[str] = typer.Argument(
        ..., help="Pictures of the cache (paths relative to its root, or full paths) or new picture files."
    ),
    k: int = typer.Option(10, "-k", help="How many neighbours per query."),
    exclude_split: list[str] = typer.Option(
        [], "--exclude-split", help="Leave out the pictures of this split (train, val or test); repeatable."
    ),
    only_split: list[str] = typer.Option(
        [], "--only-split", help="Search only the pictures of this split (train, val or test); repeatable."
    ),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="Train, validation and test fractions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="The cache's weights file, when a new picture is a query and the file moved."
    ),
    montage: Optional[Path] = typer.Option(
        None, "--montage", help="Draw each query's neighbours in a grid into this picture (.png by its suffix)."
    ),
    index: bool = typer.Option(
        False,
        "--index",
        help="Answer from an approximate index beside the cache (CACHE.index/, built when missing or outdated; "
        "needs usearch). For collections too large to scan.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Find the pictures of a cache nearest to a query, by centred cosine of the cached features.

    Example: headstart similar pets.h5 Cat/1.jpg -k 5
    Example: headstart similar pets.h5 Cat/1.jpg --only-split train   (a test picture's twins in training)
    Example: headstart similar pets.h5 ~/Downloads/my-cat.jpg --montage near.png
    """
    from headstart.heads.split import SplitSpec
    from headstart.similar import similar

    with cli_errors():
        results = similar(
            cache,
            queries,
            k=k,
            exclude_split=exclude_split,
            only_split=only_split,
            split=SplitSpec.parse(split, seed),
            weights=weights,
            index=index,
        )
        if montage is not None:
            from headstart.audit.pictures import montage as draw
            from headstart.cache import open_cache

            with open_cache(cache) as c:
                root = Path(c.root)
            items = [(n.path, f"{n.similarity:.3f} {n.label} ({n.split})") for r in results for n in r.neighbours]
            montage.parent.mkdir(parents=True, exist_ok=True)
            draw(items, root, montage, columns=max(1, min(k, 8)))
    if as_json:
        typer.echo(json.dumps({"cache": str(cache), "k": k, "results": [r.to_dict() for r in results]}, indent=2))
        return
    for r in results:
        say(f"{r.query} ({'a picture of the cache' if r.source == 'cache' else 'embedded now'}):")
        typer.echo("rank\tsimilarity\tclass\tsplit\tpath")  # tabs kept for scripts: no rich here
        for i, n in enumerate(r.neighbours, 1):
            typer.echo(f"{i}\t{n.similarity:.4f}\t{n.label}\t{n.split}\t{n.path}")
    if montage is not None:
        say(f"Montage written to {montage}")


def register(app: typer.Typer) -> None:
    """Add similar to ``app``."""
    app.command("similar")(similar_cmd)
