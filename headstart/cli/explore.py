"""The exploring commands of the CLI (curve, similar): parse, call, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from headstart.cli import heads as heads_cli
from headstart.cli.console import cli_errors, say


def similar_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    queries: Optional[list[str]] = typer.Argument(
        None, help="Pictures of the cache (paths relative to its root, or full paths) or new picture files."
    ),
    text: list[str] = typer.Option(
        [],
        "--text",
        help="A sentence to find pictures of, by the text tower of the cache's CLIP or SigLIP preset (plain cosine "
        "to the image embeddings); repeatable.",
    ),
    k: int = typer.Option(10, "--top-k", "-k", help="How many neighbours per query (as predict's --top-k)."),
    exclude_split: list[str] = typer.Option(
        [], "--exclude-split", help="Leave out the pictures of this split (train, val or test); repeatable."
    ),
    only_split: list[str] = typer.Option(
        [], "--only-split", help="Search only the pictures of this split (train, val or test); repeatable."
    ),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="Train, validation and test fractions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    weights: Optional[Path] = typer.Option(
        None,
        "--weights",
        help="The cache's weights file (or preset folder), when a new picture or a --text is a query and it moved.",
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
    Example: headstart similar pets-clip.h5 --text "a cat asleep on a sofa"   (CLIP and SigLIP caches)
    """
    from headstart.heads.split import SplitSpec
    from headstart.similar import similar
    from headstart.zeroshot import similar_text

    with cli_errors():
        how = dict(exclude_split=exclude_split, only_split=only_split, split=SplitSpec.parse(split, seed))
        how.update(k=k, weights=weights, index=index)
        results = similar(cache, queries, **how) if queries or not text else []
        if text:
            results += similar_text(cache, text, **how)
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
        what = {"cache": "a picture of the cache", "file": "embedded now", "text": "text, plain cosine"}[r.source]
        say(f"{r.query} ({what}):")
        typer.echo("rank\tsimilarity\tclass\tsplit\tpath")  # tabs kept for scripts: no rich here
        for i, n in enumerate(r.neighbours, 1):
            typer.echo(f"{i}\t{n.similarity:.4f}\t{n.label}\t{n.split}\t{n.path}")
    if montage is not None:
        say(f"Montage written to {montage}")


def curve_cmd(
    caches: list[Path] = typer.Argument(..., help="One or more feature caches (backbones) made by headstart extract."),
    head: str = typer.Option("logreg", "--head", help="The head to fit at every point."),
    out: Path = typer.Option(Path("runs/curve"), "--out", "-o", help="Folder for curve.json, curve.png, journal."),
    draws: int = typer.Option(5, "--draws", help="Random class-balanced draws per point."),
    largest: Optional[int] = typer.Option(
        None, "--largest", help="Largest draw in pictures a class before the whole training split (default: all)."
    ),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="Train, validation and test fractions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the draws and the heads."),
    epochs: Optional[int] = heads_cli.EPOCHS,
    hidden_units: Optional[int] = heads_cli.HIDDEN,
    c: Optional[float] = typer.Option(None, "--C", help="Inverse regularization of logreg and svm (default: chosen)."),
    k: Optional[int] = typer.Option(None, "--k", help="Neighbours of knn (default: chosen on validation)."),
    jobs: int = typer.Option(
        1, "--jobs", help="Points fitted at once in worker processes (logreg, svm and knn; Keras heads fit one by one)."
    ),
    no_plots: bool = heads_cli.NO_PLOTS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Learning curve: test accuracy and log loss against labelled training pictures per class
    (1, 2, 4, ... then all), a few random draws per point, one line per cache.

    Killed or stopped, the same command goes on from the points already fitted.

    Example: headstart curve pets-vgg16-fc2.h5 --head logreg --out runs/curve
    Example: headstart curve vgg16.h5 mobilenet.h5 --largest 64 --out runs/curve-backbones
    """
    from headstart.heads.curve import learning_curve
    from headstart.heads.split import SplitSpec

    params = {key: v for key, v in (("epochs", epochs), ("hidden_units", hidden_units), ("C", c), ("k", k)) if v}
    with cli_errors():
        heads_cli._check_applies(params, [head])
        result = learning_curve(
            caches,
            head,
            out,
            split=SplitSpec.parse(split, seed),
            params=params,
            draws=draws,
            largest=largest,
            plots=not no_plots,
            jobs=jobs,
        )
    if as_json:
        typer.echo(json.dumps({"out": str(result.out), "caches": result.caches, "summary": result.rows}, indent=2))
        return
    typer.echo("cache\tper class\ttrain pictures\tdraws\taccuracy mean\taccuracy sd\tlog loss mean")
    for r in result.rows:
        typer.echo(
            f"{Path(r['cache']).name}\t{r['per_class']}\t{r['n_train']}\t{r['draws']}\t{r['accuracy_mean']:.3f}\t"
            f"{r['accuracy_std']:.3f}\t{r['log_loss_mean']:.3f}"
        )
    skipped = f", {result.skipped} points from the journal" if result.skipped else ""
    say(f"Curve written to {result.out} in {result.seconds:.1f} s{skipped}  (plot: {result.out / 'curve.png'})")


def register(app: typer.Typer) -> None:
    """Add curve and similar to ``app``."""
    app.command("curve")(curve_cmd)
    app.command("similar")(similar_cmd)
