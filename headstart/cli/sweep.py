"""The experiment commands of the CLI: `sweep` (search a head's options) and `runs` (every run in one table).

`register(app)` adds them to a typer app; the library work is in `headstart.heads.sweep` and
`headstart.heads.catalog`, imported inside the commands so ``headstart --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from headstart.cli.console import cli_errors, err_console, out_console, say
from headstart.heads.names import HEAD_NAMES as _HEADS


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _shown(v: Any) -> str:
    if v is None:
        return "none"
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_cmd(
    cache: Path = typer.Argument(..., help="A feature cache made by headstart extract."),
    head: str = typer.Option("mlp", "--head", help=f"The head to search, one of: {', '.join(_HEADS)}."),
    grid: list[str] = typer.Option(
        [], "--grid", help="NAME=V1,V2,... values of one option (repeatable); every combination is a trial."
    ),
    ranges: list[str] = typer.Option(
        [], "--range", help="NAME=LOW:HIGH[:log] for a random search (with --trials; repeatable)."
    ),
    trials: Optional[int] = typer.Option(
        None,
        "--trials",
        help="Draw this many random settings from --grid values and --range ranges "
        "(default ranges per head when neither is given).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Sweep folder (default runs/sweep-HEAD)."),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="Train, validation and test fractions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the heads and the random search."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Most epochs of every trial (softmax, mlp)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early-stopping patience of every trial."),
    calibrate: str = typer.Option(
        "none",
        "--calibrate",
        help="none, or temperature: calibrate the best run on rows no training or choice saw (see "
        "--calibration-rows; with split, every trial trains without the rows set aside).",
    ),
    calibration_fraction: float = typer.Option(
        0.2, "--calibration-fraction", help="With --calibrate: the share of the training pictures set aside."
    ),
    calibration_rows: str = typer.Option(
        "split",
        "--calibration-rows",
        help="With --calibrate: split (a share set aside) or crossfit (out-of-fold scores of every training picture).",
    ),
    halving: bool = typer.Option(
        False, "--halving", help="Successive halving (softmax, mlp): few epochs for all, more for the best third."
    ),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", min=1, help="Trials at once (default: as many as cores and memory allow)."
    ),
    stream: Optional[bool] = typer.Option(
        None, "--stream/--in-memory", help="Read batches from the file, or load the cache (default: by size)."
    ),
    rank_by: str = typer.Option(
        "accuracy", "--rank-by", help="accuracy (ties: log loss), or log_loss: finer on a small validation split."
    ),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
) -> None:
    """Search a head's options: each trial scored on the validation split, the best one kept as a run.

    The test split is read once, by the best trial, at the end. An interrupted sweep keeps its
    finished trials; the same command again skips them. OUT gets sweep.json, trials.csv, a plot per
    option and best/ (a run folder for evaluate, predict, export).

    Example: headstart sweep pets.h5 --head mlp --grid hidden_units=128,256,512 --grid dropout=0.2,0.5
    """
    from headstart.heads import sweep as S
    from headstart.heads import sweep_space as space
    from headstart.heads.split import SplitSpec

    with cli_errors("Interrupted. Finished trials are kept; run the same command to go on."):
        g = space.parse_grid(head, grid)
        r = space.parse_ranges(head, ranges)
        fixed: dict[str, Any] = {"random_state": seed}
        if epochs is not None:
            fixed["epochs"] = epochs
        if patience is not None:
            fixed["patience"] = patience
        from headstart.cli.heads import _check_applies

        _check_applies({k: v for k, v in fixed.items() if k != "random_state"}, [head])

        def progress(rec: dict, done: int, total: int) -> None:
            params = " ".join(f"{k}={_shown(v)}" for k, v in rec["params"].items())
            say(
                f"  [{done}/{total}] {params}: validation accuracy {rec['val']['accuracy']:.3f}, "
                f"log loss {rec['val']['log_loss']:.3f} ({rec['seconds']:.1f} s)",
                err=True,
            )

        result = S.sweep(
            cache,
            head,
            out or Path("runs") / f"sweep-{head}",
            grid=g,
            ranges=r,
            trials=trials,
            split=SplitSpec.parse(split, seed),
            params=fixed,
            calibrate=calibrate,
            calibration_fraction=calibration_fraction,
            calibration_rows=calibration_rows,
            halving=halving,
            jobs=jobs,
            plots=not no_plots,
            stream=stream,
            search_seed=seed,
            rank_by=rank_by,
            on_trial=progress,
        )
    from rich.markup import escape
    from rich.table import Table

    names = list(dict.fromkeys(k for row in result.trials for k in row["params"]))
    table = Table(title=f"{head} sweep on {escape(cache.name)}: {len(result.trials)} trials, validation split")
    for col in ("rank", *names, "val accuracy", "val log loss", "val ECE", "fit s"):
        table.add_column(col, justify="right")
    for row in result.trials[:25]:
        table.add_row(
            str(row["rank"]),
            *(_shown(row["params"].get(n)) if n in row["params"] else "-" for n in names),
            _fmt(row["val"]["accuracy"]),
            _fmt(row["val"]["log_loss"]),
            _fmt(row["val"]["ece"]),
            f"{row['seconds']:.1f}",
        )
    out_console.print(table)
    if len(result.trials) > 25:
        say(f"  ... and {len(result.trials) - 25} more in {result.out / 'trials.csv'}")
    from headstart.heads.metrics import summary_line

    b = result.best
    skipped = f", {result.skipped} taken from the journal" if result.skipped else ""
    say(f"{len(result.trials)} trials in {result.seconds:.1f} s ({result.jobs} at a time{skipped}).")
    say(
        f"Best ({', '.join(f'{k}={_shown(v)}' for k, v in result.trials[0]['params'].items())}) on the test split: "
        f"{summary_line(b.metrics['test'])}"
    )
    say(f"Sweep written to {result.out}; the best run is {b.run_dir}  (next: headstart evaluate {b.run_dir})")


def runs_cmd(
    folder: Path = typer.Argument(Path("runs"), help="Folder to search for runs, comparisons and sweeps."),
    sort: str = typer.Option(
        "val_accuracy",
        "--sort",
        help="Column to sort by: val_accuracy, test_accuracy, log_loss, ece, fit_seconds, date, head, path.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (groups of rows, notes)."),
) -> None:
    """Every run, comparison and sweep below FOLDER in one table, grouped by the cache they were fitted on.

    Folders that cannot be read are listed as notes at the end; symbolic links are not followed.

    Example: headstart runs runs/ --sort test_accuracy
    """
    from headstart.heads import catalog

    with cli_errors():
        cat = catalog.find_runs(folder)
        catalog.sort_rows(cat.rows, sort)  # check --sort before printing anything
        groups = cat.groups()
        for g in groups:
            g["rows"] = catalog.sort_rows(g["rows"], sort)
    if as_json:
        for g in groups:
            for row in g["rows"]:
                row.pop("cache_key", None)
        typer.echo(json.dumps({"folder": str(folder), "groups": groups, "notes": cat.notes}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    if not groups:
        say(f"No runs below {folder}.")
    for g in groups:
        n = len(g["rows"])
        table = Table(title=f"cache {escape(g['cache'])} ({n} run{'s' if n != 1 else ''})", title_justify="left")
        for col in ("run", "head", "parameters", "val acc", "test acc", "log loss", "ECE", "fit s", "date", "part of"):
            table.add_column(
                col, justify="left" if col in ("run", "head", "parameters", "date", "part of") else "right"
            )
        for row in g["rows"]:
            table.add_row(
                escape(row["path"]),
                row["head"],
                escape(row["params"]),
                _fmt(row["val_accuracy"]),
                _fmt(row["test_accuracy"]),
                _fmt(row["log_loss"]),
                _fmt(row["ece"]),
                _fmt(row["fit_seconds"], 1),
                (row["date"] or "-")[5:16].replace("T", " "),
                escape(" ".join(x for x in (row["group"], "" if row["kind"] == "run" else row["kind"]) if x)),
            )
        out_console.print(table)
    for note in cat.notes:
        err_console.print(f"skipped {escape(note['path'])}: {escape(note['reason'])}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    """Add sweep and runs to ``app``."""
    app.command("sweep")(sweep_cmd)
    app.command("runs")(runs_cmd)
