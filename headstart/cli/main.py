"""The `headstart` command line: parse options, call the library, turn its errors into messages."""

from __future__ import annotations

import logging

import typer

from headstart.cli import audit, baseline, demo, explore, export, extract, heads, merge, sweep
from headstart.cli.console import err_console, say

app = typer.Typer(
    name="headstart",
    help=(
        "Transfer learning on modest hardware: extract frozen-backbone features once into an "
        "HDF5 cache, then train and compare classification heads on it in seconds.\n\n"
        "Typical session:\n\n"
        "  headstart download pets data/\n\n"
        "  headstart extract data/PetImages --out pets-vgg16-fc2.h5\n\n"
        "  headstart info pets-vgg16-fc2.h5\n\n"
        "  headstart compare pets-vgg16-fc2.h5 --out runs/"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)], force=True
    )
    if verbose < 2:
        logging.getLogger("h5py").setLevel(logging.WARNING)


def _print_version(value: bool) -> None:
    if value:
        from headstart import __version__

        say(f"headstart {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    setup_logging(verbose)


# Every command group lives in a headstart/cli/<group>.py module with a register(app) function: one style.
for _group in (extract, heads, sweep, export, audit, explore, merge, baseline, demo):
    _group.register(app)


def run() -> None:  # pragma: no cover
    app()
