"""The `headstart` command line: parse options, call the library, turn its errors into messages."""

from __future__ import annotations

import logging
import sys

import typer

from headstart.cli import audit, baseline, demo, explore, export, extract, heads, merge, sweep
from headstart.cli.console import err_console, say
from headstart.cli.help import PANEL_OF, Command, Group

app = typer.Typer(
    name="headstart",
    cls=Group,
    help=(
        "Transfer learning on modest hardware: extract frozen-backbone features once into an "
        "HDF5 cache, then train and compare classification heads on it in seconds.\n\n"
        "Typical session:\n\n"
        "  headstart demo\n\n"
        "  headstart extract PICTURES/ --out pictures.h5\n\n"
        "  headstart compare pictures.h5 --out runs/compare\n\n"
        "  headstart report runs/compare --out report.html"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: int) -> None:
    import warnings

    from headstart import tf_quiet

    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        fmt = "%(message)s"
    else:  # a file or a pipe: one plain line per record, never folded
        handler, fmt = _StderrHandler(), "%(levelname)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    if verbose < 2:
        logging.getLogger("h5py").setLevel(logging.WARNING)
    if verbose:  # -v: TensorFlow's start-up lines and library warnings as they come
        tf_quiet.uninstall()
        if not sys.warnoptions:
            warnings.simplefilter("default")
    else:
        tf_quiet.install()
        # headstart speaks through logging; the warnings of the libraries below (Pillow's
        # DecompressionBombWarning for a picture it then reads fine, Keras' notes on input shapes)
        # are not the user's business on a normal run. python -W or PYTHONWARNINGS still wins.
        if not sys.warnoptions:
            warnings.simplefilter("ignore")
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _print_version(value: bool) -> None:
    if value:
        from headstart import __version__

        say(f"headstart {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(
        0,
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="More log output (-v info and library warnings, -vv debug).",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    setup_logging(verbose)


# Every command group lives in a headstart/cli/<group>.py module with a register(app) function: one style.
for _group in (extract, heads, sweep, export, audit, explore, merge, baseline, demo):
    _group.register(app)
for _info in app.registered_commands:
    _info.cls = Command
    _info.rich_help_panel = PANEL_OF[_info.name]


def run() -> None:  # pragma: no cover
    app()
