"""The `headstart` command line: parse options, call the library, turn its errors into messages."""

from __future__ import annotations

import logging
import re
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from headstart.cli import audit, baseline, demo, export, extract, heads, merge, sweep
from headstart.cli.console import err_console, say

# The commands by stage, in the order `headstart --help` shows them. Every command has a panel.
PANELS = {
    "Start here": ["demo"],
    "Data: pictures to a feature cache": ["download", "extract", "info"],
    "Heads: train and compare on a cache": [
        "train",
        "compare",
        "sweep",
        "runs",
        "evaluate",
        "misclassified",
        "baseline",
    ],
    "Looking at the data": ["audit", "map", "report"],
    "Shipping": ["predict", "export", "backbones"],
    "Scale-out": ["merge"],
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def _plain(text):
    """Help text as written: ``headstart[ray]`` is not rich markup (typer's help reads markup), and
    a paragraph's line breaks are the docstring's, not the terminal's."""
    if not text:
        return text
    from rich.markup import escape

    return "\n\n".join(" ".join(p.split("\n")) for p in escape(text).split("\n\n"))


def _tidy(params):
    """A flag (``--json``) or a count (``-v``) takes no value: no ``<bool>``/``<int>`` after it.
    Help texts are shown as written."""
    for param in params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif getattr(param, "multiple", False) or param.nargs == -1:
            # a repeatable option or a variadic argument: the type of one value, not <list[Path]>
            one = re.sub(r"^<list\[(\w+)\]>$", lambda m: f"<{m.group(1).lower()}>", param.display_type(None) or "")
            param.display_type_rich = lambda ctx, one=one, param=param: one + ("..." if param.nargs == -1 else "")
        if not getattr(param, "_help_escaped", False):
            param.help = _plain(param.help)
            param._help_escaped = True
    return params


class Command(TyperCommand):
    """A command whose help shows flags without a metavar and brackets as written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help, self.short_help = _plain(self.help), _plain(self.short_help)

    def get_params(self, ctx):
        return _tidy(super().get_params(ctx))


class Group(TyperGroup):
    """The `headstart` group: commands by stage, flags without a metavar."""

    def get_params(self, ctx):
        return _tidy(super().get_params(ctx))

    def list_commands(self, ctx):
        """By stage, as `PANELS` lists them (typer prints panels in the order it first meets them)."""
        order = [name for names in PANELS.values() for name in names]
        return sorted(super().list_commands(ctx), key=lambda n: order.index(n) if n in order else len(order))


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
        0, "--verbose", "-v", count=True, help="More log output (-v info and library warnings, -vv debug)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    setup_logging(verbose)


# Every command group lives in a headstart/cli/<group>.py module with a register(app) function: one style.
for _group in (extract, heads, sweep, export, audit, merge, baseline, demo):
    _group.register(app)
for _info in app.registered_commands:
    _info.cls = Command
    _info.rich_help_panel = PANEL_OF[_info.name]


def run() -> None:  # pragma: no cover
    app()
