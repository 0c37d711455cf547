"""The head commands of the CLI (train, compare, evaluate, predict, misclassified): parse, call, print.

`register(app)` adds them to a typer app. Each command calls one function of `headstart.heads`
(or `headstart.ship.predict`), imported inside the command so that ``headstart --help`` stays fast, and
turns a `HeadstartError` into one line on stderr and its exit code (2). ``predict`` exits 1
when some pictures could not be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from headstart.cli.console import cli_errors, err_console, out_console
from headstart.cli.options import (
    BATCH,
    CALIBRATE,
    CALIBRATION_FRACTION,
    CALIBRATION_ROWS,
    CLASS_WEIGHT,
    DROPOUT,
    EPOCHS,
    EXCLUDE_LIST,
    HIDDEN,
    LR,
    NO_PLOTS,
    PATIENCE,
    PROMPT,
    SEED,
    SPLIT,
    STREAM,
    TEXT_WEIGHTS,
)
from headstart.errors import HeadstartError
from headstart.heads.names import DEFAULT_HEADS as _DEFAULT_HEADS
from headstart.heads.names import HEAD_NAMES as _HEADS

EXIT_SOME_FAILED = 1


def fail_line(text: str) -> str:
    from rich.markup import escape

    return f"[bold red]Error:[/] {escape(text)}"


def _echo(text: str) -> None:
    """One plain line on stdout (tabs kept, no wrapping), for output that scripts read."""
    typer.echo(text)


def _split(text: str, seed: int):
    from headstart.heads.split import SplitSpec

    return SplitSpec.parse(text, seed)


def _params(
    epochs: Optional[int],
    batch_size: Optional[int],
    learning_rate: Optional[float],
    hidden_units: Optional[int],
    dropout: Optional[float],
    patience: Optional[int],
    class_weight: str,
) -> dict[str, Any]:
    """The head options the user set (unset ones keep each head's default)."""
    if class_weight not in ("none", "balanced"):
        raise HeadstartError(f"Expected --class-weight none or balanced. Received: {class_weight!r}.")
    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "hidden_units": hidden_units,
        "dropout": dropout,
        "patience": patience,
        "class_weight": "balanced" if class_weight == "balanced" else None,
    }
    return {k: v for k, v in given.items() if v is not None}


_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "hidden_units": "--hidden-units",
    "dropout": "--dropout",
    "patience": "--patience",
    "class_weight": "--class-weight",
    "k": "--k",
    "C": "--C",
    "prompts": "--prompt",
}


def _check_applies(params: dict[str, Any], heads: list[str]) -> None:
    """Each option the user set must apply to at least one of the chosen heads (named as a flag)."""
    from headstart.heads.registry import head_class, head_params

    for name in heads:
        head_class(name)  # an unknown head is named before its options
    for key in params:
        takers = [h for h in heads if key in head_params(h)]
        if not takers:
            from headstart.heads.registry import head_names

            applies = [h for h in head_names() if key in head_params(h)]
            raise HeadstartError(
                f"{_FLAGS.get(key, key)} does not apply to the {' or '.join(heads)} head"
                f"{'s' if len(heads) > 1 else ''}; it applies to {', '.join(applies)}. Leave it out."
            )


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _exclude(path: Optional[Path]):
    from headstart.exclude_list import read_exclude_list

    return read_exclude_list(path) if path is not None else None


def train_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    head: str = typer.Option("logreg", "--head", help=f"One of: {', '.join(_HEADS)}."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (default runs/HEAD)."),
    split: str = SPLIT,
    seed: int = SEED,
    epochs: Optional[int] = EPOCHS,
    batch_size: Optional[int] = BATCH,
    learning_rate: Optional[float] = LR,
    hidden_units: Optional[int] = HIDDEN,
    dropout: Optional[float] = DROPOUT,
    patience: Optional[int] = PATIENCE,
    class_weight: str = CLASS_WEIGHT,
    stream: Optional[bool] = STREAM,
    no_plots: bool = NO_PLOTS,
    exclude_list: Optional[Path] = EXCLUDE_LIST,
    calibrate: str = CALIBRATE,
    calibration_fraction: float = CALIBRATION_FRACTION,
    calibration_rows: str = CALIBRATION_ROWS,
    k: Optional[int] = typer.Option(None, "--k", help="Neighbours of knn (default: chosen on validation)."),
    c: Optional[float] = typer.Option(
        None, "--C", help="Inverse regularization of logreg and svm (default: chosen on validation)."
    ),
    prompt: list[str] = PROMPT,
    weights: Optional[Path] = TEXT_WEIGHTS,
) -> None:
    """Train one head on the cache's training split and write a run directory.

    The run holds the fitted head, run.json, metrics.json, history.csv and plots. --head zeroshot
    (caches of CLIP and SigLIP presets) fits on no picture: the class names' text embeddings are its weights.

    Example: headstart train pets-vgg16-fc2.h5 --head logreg --out runs/logreg
    Example: headstart train pets-clip.h5 --head zeroshot --prompt "a photo of a {}, a type of pet."
    """
    from headstart import zeroshot

    with cli_errors():
        params = _params(epochs, batch_size, learning_rate, hidden_units, dropout, patience, class_weight)
        params.update({key: v for key, v in (("k", k), ("C", c)) if v is not None})
        params.update({"prompts": tuple(prompt)} if prompt else {})
        _check_applies(params, [head])
        params["random_state"] = seed
        result = zeroshot.train(
            cache,
            head,
            out or Path("runs") / head,
            split=_split(split, seed),
            params=params,
            plots=not no_plots,
            stream=stream,
            exclude=_exclude(exclude_list),
            calibrate=calibrate,
            calibration_fraction=calibration_fraction,
            calibration_rows=calibration_rows,
            weights=weights,
        )
    from headstart.heads.metrics import summary_line

    c = result.counts
    fitted = "from the class names' text embeddings, fitted on no picture" if head == "zeroshot" else None
    _echo(
        f"Trained {result.head} in {result.fit_seconds:.1f} s on {c['train']:,} pictures "
        f"(validation {c['val']:,}, test {c['test']:,}{', streamed from disk' if result.streamed else ''}); "
        f"{result.chosen}."
        if fitted is None
        else f"Built {result.head} {fitted} (validation {c['val']:,}, test {c['test']:,} pictures)."
    )
    _echo(f"  validation  {summary_line(result.metrics['val'])}")
    _echo(f"  test        {summary_line(result.metrics['test'])}")
    calibration = result.metrics.get("calibration", {})
    if calibration:
        how = (
            f"scored out of {calibration['folds']} folds (cross-fitting)"
            if "folds" in calibration
            else "set aside (calibration split)"
        )
        _echo(
            f"  temperature {calibration['temperature']:.3g}, fitted on {calibration['rows']:,} training pictures {how}"
        )
    for split, shown in (("calib", "calibration split"), ("test", "test")):
        cal = calibration.get(split)
        if cal:
            _echo(
                f"  calibration ({shown}): log loss {cal['log_loss_before']:.3f} -> {cal['log_loss_after']:.3f}, "
                f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
            )
    _echo(f"Run written to {result.run_dir}  (next: headstart evaluate {result.run_dir})")


def compare_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    heads: str = typer.Option(
        ",".join(_DEFAULT_HEADS), "--heads", help=f"Comma-separated heads to train, among: {', '.join(_HEADS)}."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Folder for the runs and the table (default runs/compare-CACHE)."
    ),
    split: str = SPLIT,
    seed: int = SEED,
    epochs: Optional[int] = EPOCHS,
    batch_size: Optional[int] = BATCH,
    learning_rate: Optional[float] = LR,
    hidden_units: Optional[int] = HIDDEN,
    dropout: Optional[float] = DROPOUT,
    patience: Optional[int] = PATIENCE,
    class_weight: str = CLASS_WEIGHT,
    stream: Optional[bool] = STREAM,
    no_plots: bool = NO_PLOTS,
    baseline: Optional[Path] = typer.Option(
        None, "--baseline", help="A `headstart baseline` run on the same split: one more row in the table and plot."
    ),
    exclude_list: Optional[Path] = EXCLUDE_LIST,
    prompt: list[str] = PROMPT,
    weights: Optional[Path] = TEXT_WEIGHTS,
) -> None:
    """Train several heads on the same split and print one table.

    Each run goes to OUT/HEAD; comparison.json and comparison.png go to OUT.

    Example: headstart compare pets-vgg16-fc2.h5 --heads softmax,logreg --out runs/compare
    Example: headstart compare pets-clip.h5 --heads zeroshot,logreg   (what the labels add to the class names)
    """
    from headstart import zeroshot

    with cli_errors():
        params = _params(epochs, batch_size, learning_rate, hidden_units, dropout, patience, class_weight)
        params.update({"prompts": tuple(prompt)} if prompt else {})
        names = [h.strip() for h in heads.split(",") if h.strip()]
        _check_applies(params, names)
        params["random_state"] = seed
        result = zeroshot.compare(
            cache,
            out or Path("runs") / f"compare-{cache.stem}",
            heads=names,
            split=_split(split, seed),
            params=params,
            plots=not no_plots,
            stream=stream,
            baseline=baseline,
            exclude=_exclude(exclude_list),
            weights=weights,
        )
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"heads on {escape(cache.name)}")
    for col in ("head", "val accuracy", "test accuracy", "test log loss", "fit s"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for row in result.rows:
        table.add_row(
            row["head"],
            _fmt(row["val_accuracy"]),
            _fmt(row["test_accuracy"]),
            _fmt(row["test_log_loss"]),
            f"{row['fit_seconds']:.2f}",
        )
    out_console.print(table)
    _echo(f"Runs, comparison.json and comparison.png are in {result.out}")


def evaluate_cmd(
    run: Path = typer.Argument(..., help="A run directory made by headstart train."),
    cache: Optional[Path] = typer.Argument(
        None, help="Another cache to evaluate on, whole (default: the run's test split)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Recompute a run's metrics on its test split, or on a whole other cache.

    The cache must have been extracted with the run's settings.

    Example: headstart evaluate runs/logreg new-pictures.h5
    """
    from headstart.heads import evaluation

    with cli_errors():
        result = evaluation.evaluate(run, cache)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "run": str(run),
                    "cache": str(result.cache_path),
                    "scope": result.scope,
                    "excluded": result.excluded,
                    "metrics": result.metrics,
                },
                indent=2,
            )
        )
        return
    from rich.table import Table

    from headstart.heads.metrics import summary_line

    m = result.metrics
    note = f"; left out {result.excluded:,} pictures the run trained or validated on" if result.excluded else ""
    _echo(f"{result.cache_path} ({result.scope}{note}): {summary_line(m)}")
    if not m.get("n"):
        return
    extra = [(k, m[k]) for k in ("roc_auc", "roc_auc_ovr", "top5_accuracy") if m.get(k) is not None]
    if extra:
        _echo("  " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in extra))
    table = Table()
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in m["per_class"].items():
        table.add_row(name, _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), str(row["support"]))
    out_console.print(table)


def predict_cmd(
    run: Path = typer.Argument(
        ..., help="A run directory made by headstart train, or a .keras file made by headstart export."
    ),
    paths: list[Path] = typer.Argument(..., help="Pictures, and folders to search for pictures."),
    top_k: int = typer.Option(1, "--top-k", "-k", min=1, help="Print the K most probable classes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of lines."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="The backbone weights file, when the cache was extracted with one."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Pictures per backbone call."),
) -> None:
    """Classify pictures with a run's head: one line per picture, path, class, probability.

    Features are extracted with the run's backbone and settings (from the cache fingerprint);
    an exported .keras model gets each picture whole and does the rest itself.

    An unreadable picture gets an error line of its own on stderr; the others are still predicted; exit code 1.

    Example: headstart predict runs/logreg my-cat.jpg more-pictures/ --top-k 2
    """
    from headstart.ship import predict

    with cli_errors():
        result = predict.predict(run, paths, top_k=top_k, batch_size=batch_size, weights=weights)
    failed = result.failed
    if as_json:
        typer.echo(
            json.dumps({"predictions": [p.to_dict() for p in result.predictions], "failed": len(failed)}, indent=2)
        )
    else:
        for p in result.predictions:
            if p.ok:
                top = ", ".join(f"{c} {prob:.3f}" for c, prob in p.top)
                _echo(f"{p.path}\t{top}")
            else:
                err_console.print(fail_line(f"{p.path}: {p.error}"), soft_wrap=True)
    if failed:
        err_console.print(f"{len(failed)} of {len(result.predictions)} pictures could not be predicted.")
        raise typer.Exit(EXIT_SOME_FAILED)


def misclassified_cmd(
    run: Path = typer.Argument(..., help="A run directory made by headstart train."),
    n: int = typer.Option(20, "--top", "-n", help="How many pictures to list, highest loss first."),
    number: Optional[int] = typer.Option(None, "--number", hidden=True, help="Old name of --top."),
    montage: Optional[Path] = typer.Option(
        None, "--montage", help="Draw them in a grid into this picture (.png, .jpg, .pdf, .svg, .webp by its suffix)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """List the misclassified test pictures of highest loss: path, true class, predicted, probability.

    Example: headstart misclassified runs/logreg --top 25 --montage mistakes.png
    """
    from headstart.heads import evaluation

    n = n if number is None else number
    with cli_errors():
        result = evaluation.misclassified(run, n, montage)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "n_test": result.n_test,
                    "n_wrong": result.n_wrong,
                    "montage": None if result.montage is None else str(result.montage),
                    "mistakes": [m.to_dict() for m in result.mistakes],
                },
                indent=2,
            )
        )
        return
    _echo(
        f"{result.n_wrong:,} of {result.n_test:,} test pictures misclassified; "
        f"the {len(result.mistakes)} of highest loss (-log p(true class)), highest first:"
    )
    if result.mistakes:  # tab-separated, one header line: a script can read it as a TSV
        _echo("path\ttrue\tpredicted\tp(predicted)\tloss")
    for m in sorted(result.mistakes, key=lambda m: -m.loss):
        _echo(f"{m.file}\t{m.true}\t{m.predicted}\t{m.probability:.3f}\t{m.loss:.3f}")
    if result.montage is not None:
        _echo(f"Montage written to {result.montage}")


def register(app: typer.Typer) -> None:
    """Add train, compare, evaluate, predict and misclassified to ``app``."""
    app.command("train")(train_cmd)
    app.command("compare")(compare_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("predict")(predict_cmd)
    app.command("misclassified")(misclassified_cmd)
