"""The `baseline` command: train the notebook's CNN from scratch on a picture folder, write a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from headstart.cli.console import cli_errors, say


def baseline_cmd(
    source: Path = typer.Argument(..., help="Folder with one sub-folder per class, e.g. PetImages/."),
    out: Path = typer.Option(Path("runs/scratch"), "--out", "-o", help="Run directory to write."),
    input_size: int = typer.Option(224, "--input-size", help="Side of the pictures fed to the CNN, in pixels."),
    epochs: int = typer.Option(30, "--epochs", help="Most epochs (early stopping on validation loss)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Pictures per training step."),
    learning_rate: float = typer.Option(1e-3, "--learning-rate", help="Adam learning rate."),
    patience: int = typer.Option(5, "--patience", help="Epochs without a better validation loss before stopping."),
    no_flip: bool = typer.Option(False, "--no-flip", help="No random horizontal flips during training."),
    workers: int = typer.Option(2, "--workers", help="Threads decoding batches ahead of the model."),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="Train, validation and test fractions (as the heads')."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split (as the heads'), the weights and the shuffling."),
    exclude: list[str] = typer.Option([], "--exclude", help="Leave out this class (repeatable)."),
    limit_per_class: Optional[int] = typer.Option(None, help="At most N pictures per class (the first N, sorted)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per epoch."),
) -> None:
    """Train the classic notebook's small CNN from scratch, streaming the pictures from disk, on the
    same train / validation / test split as the heads; the run folder compares with theirs.

    Example: headstart baseline PetImages/ --out runs/scratch   (then: headstart compare CACHE --baseline runs/scratch)
    """
    from headstart.baseline import BaselineParams, train_baseline
    from headstart.heads.metrics import summary_line
    from headstart.heads.split import SplitSpec

    def on_epoch(epoch: int, logs: dict) -> None:
        if not quiet:
            say(
                f"epoch {epoch}: loss {logs.get('loss', float('nan')):.3f}, accuracy {logs.get('accuracy', 0):.3f}, "
                f"val loss {logs.get('val_loss', float('nan')):.3f}, val accuracy {logs.get('val_accuracy', 0):.3f}"
            )

    with cli_errors(f"Interrupted. Nothing was written to {out}; run the same command to train again."):
        params = BaselineParams(
            input_size=input_size,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            flip=not no_flip,
            workers=workers,
            seed=seed,
        )
        result = train_baseline(
            source,
            out,
            params=params,
            split=SplitSpec.parse(split, seed),
            exclude=exclude,
            limit_per_class=limit_per_class,
            plots=not no_plots,
            on_epoch=on_epoch,
        )
    c = result.counts
    skipped = f"; skipped {len(result.failed)} unreadable (listed in run.json)" if result.failed else ""
    say(
        f"Trained the scratch CNN in {result.fit_seconds:.1f} s on {c['train']:,} pictures (validation {c['val']:,}, "
        f"test {c['test']:,}); best epoch {result.best_epoch} of {result.epochs}{skipped}."
    )
    say(f"  validation  {summary_line(result.metrics['val'])}")
    say(f"  test        {summary_line(result.metrics['test'])}")
    say(f"Run written to {result.run_dir}  (next: headstart compare CACHE --baseline {result.run_dir})")


def register(app: typer.Typer) -> None:
    app.command("baseline")(baseline_cmd)
