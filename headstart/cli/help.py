"""How `headstart --help` looks: commands in panels by stage, flags without a type, help text as written."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from typer.core import TyperCommand, TyperGroup

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
        "curve",
    ],
    "Looking at the data": ["audit", "map", "similar", "report"],
    "Shipping": ["predict", "export", "backbones"],
    "Scale-out": ["merge"],
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


KEEP_BREAK = re.compile(r"^(?:Example|On a |One shard|- |\* | )")
"""A docstring line that starts like this starts a line of the help too (an example, a list item)."""


def _unwrap(paragraph: str) -> str:
    """The lines of a docstring paragraph joined, so the terminal wraps them, but for `KEEP_BREAK` lines."""
    lines = paragraph.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        if KEEP_BREAK.match(line):
            out.append(line)
        else:
            out[-1] += " " + line
    return "\n".join(out)


def _plain(text):
    """Help text as written: ``headstart[ray]`` is not rich markup (typer's help reads markup), and
    a paragraph's line breaks are the docstring's, not the terminal's."""
    if not text:
        return text
    from rich.markup import escape

    return "\n\n".join(_unwrap(p) for p in escape(text).split("\n\n"))


@contextlib.contextmanager
def _as_written(objects) -> Iterator[None]:
    """While typer renders the help: texts escaped for rich. Restored afterwards, so that other
    readers of the commands (a documentation generator, click's plain help) see the text itself."""
    saved = [(o, o.help, getattr(o, "short_help", None)) for o in objects if o is not None]
    try:
        for o, help_, short in saved:
            o.help = _plain(help_)
            if short is not None:
                o.short_help = _plain(short)
        yield
    finally:
        for o, help_, short in saved:
            o.help = help_
            if short is not None:
                o.short_help = short


def _tidy(params):
    """A flag (``--json``) or a count (``-v``) takes no value: no ``<bool>``/``<int>`` after it.
    A repeatable option or a variadic argument shows the type of one value, not ``<list[Path]>``."""
    for param in params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif getattr(param, "multiple", False) or param.nargs == -1:
            one = re.sub(r"^<list\[(\w+)\]>$", lambda m: f"<{m.group(1).lower()}>", param.display_type(None) or "")
            param.display_type_rich = lambda ctx, one=one, param=param: one + ("..." if param.nargs == -1 else "")
    return params


class Command(TyperCommand):
    """A command whose help shows flags without a type and brackets as written."""

    def get_params(self, ctx):
        return _tidy(super().get_params(ctx))

    def format_help(self, ctx, formatter):
        with _as_written([self, *self.get_params(ctx)]):
            return super().format_help(ctx, formatter)


class Group(TyperGroup):
    """The `headstart` group: commands in panels by stage (`PANELS`), flags without a type."""

    def get_params(self, ctx):
        return _tidy(super().get_params(ctx))

    def list_commands(self, ctx):
        """By stage, as `PANELS` lists them (typer prints panels in the order it first meets them)."""
        order = [name for names in PANELS.values() for name in names]
        return sorted(super().list_commands(ctx), key=lambda n: order.index(n) if n in order else len(order))

    def format_help(self, ctx, formatter):
        commands = [self.get_command(ctx, name) for name in self.list_commands(ctx)]
        with _as_written([self, *self.get_params(ctx), *commands]):
            return super().format_help(ctx, formatter)
