"""The `demo` command: the whole flow offline on generated pictures, or ``--pets`` for the real job."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer

from headstart.cli.console import cli_errors, out_console, say

GENERATED_NOTE = (
    "This demo runs on pictures that headstart draws itself (four shapes on random backgrounds), "
    "not on photos: it shows the tool working, not how well it does on your data. "
    "For the real job run: headstart demo --pets"
)


NEXT_STEPS = (
    "Next, on your own pictures (a folder with one sub-folder per class):",
    "  headstart extract MY_PICTURES/ --out my.h5 --backbone mobilenet --alpha 0.25 --weights bundled",
    "  headstart compare my.h5 --out runs/my",
    "  headstart report runs/my --out report.html",
    "(Without --backbone: VGG16, stronger on photos; it downloads its ImageNet weights once, about 540 MB.)",
)


def _table(rows: Sequence[dict[str, Any]]):
    from rich.table import Table

    table = Table()
    for col in ("head", "val accuracy", "test accuracy", "test log loss", "fit s"):
        table.add_column(col, justify="left" if col == "head" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for row in rows:
        table.add_row(
            row["head"],
            fmt(row["val_accuracy"]),
            fmt(row["test_accuracy"]),
            fmt(row["test_log_loss"]),
            f"{row['fit_seconds']:.2f}",
        )
    return table


def demo_cmd(
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for the pictures, caches and runs (default headstart-demo); "
        "with --pets, for the comparison (default runs/pets).",
    ),
    per_class: int = typer.Option(60, "--per-class", min=10, help="Generated pictures per class."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pictures, the random weights and the split."),
    pets: bool = typer.Option(
        False,
        "--pets",
        help="Run the real job instead: download Dogs vs Cats (786 MB), extract VGG16 fc2, compare the heads, draw the learning curve.",
    ),
    data: Path = typer.Option(Path("data"), "--data", help="With --pets: where to download the pictures."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --pets: print the commands, run nothing."),
) -> None:
    """Show the whole flow in under a minute, offline: generated pictures, a real ImageNet network
    shipped with headstart (MobileNet 0.25) against the same network with random weights.

    Example: headstart demo            (then: headstart demo --pets, on a machine with network)
    """
    from headstart import demo

    if pets:
        with cli_errors("Interrupted. Run the same command to resume: each step resumes."):
            steps = demo.pets_steps(data, out or Path("runs/pets"))
            for i, step in enumerate(steps, 1):
                say(f"[{i}/{len(steps)}] {step.command}")
                if not dry_run:
                    step.run()
        if dry_run:
            say("Dry run: nothing was downloaded or extracted.")
        return
    out = out or Path("headstart-demo")
    say(GENERATED_NOTE)
    with cli_errors(f"Interrupted. Run the same command to start the demo again in {out}."):
        result = demo.run_demo(out, per_class=per_class, seed=seed, say=say)
    for name, rows in result.tables.items():
        label = "ImageNet weights (bundled)" if name == "imagenet" else "random weights (same network)"
        say(f"MobileNet 0.25, {label}: heads on {result.pictures} generated pictures")
        out_console.print(_table(rows))
    best = {name: max(r["test_accuracy"] or 0 for r in rows) for name, rows in result.tables.items()}
    scale, chance = result.feature_scale, 1 / len(demo.SHAPES)
    say(
        f"Best test accuracy: {best['imagenet']:.3f} with ImageNet features, {best['random']:.3f} with the random "
        f"network's (chance {chance:.3f}). Mean |feature|: {scale['imagenet']:.3g} with ImageNet "
        f"weights, {scale['random']:.3g} with random ones. "
        + (
            "Through 14 untrained layers the signal fades to almost nothing: "
            if best["random"] < chance + 0.1
            else "Random features tell the shapes apart only in part: "
        )
        + "the weights are what transfer learning transfers."
    )
    say(
        f"Comparison plots: {', '.join(str(p) for p in result.plots)}; runs, caches and pictures in {result.out} "
        f"({result.seconds:.0f} s in all)."
    )
    for line in NEXT_STEPS:
        say(line)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
