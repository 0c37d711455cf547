"""Terminal output of the CLI: the two consoles, one-line errors, and exceptions → exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from headstart.errors import HeadstartError

PIPE_WIDTH = 1000
"""Columns of a table printed to a file or a pipe: wide enough that no path is folded."""


class _Console(Console):
    """A rich console that folds to the terminal's width, and prints to a file or a pipe unfolded
    (rich would assume 80 columns there and split file names over lines)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


out_console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def say(text: str, *, err: bool = False) -> None:
    """One line of plain text (paths may hold ``[`` and ``]``: no markup)."""
    (err_console if err else out_console).print(text, markup=False, soft_wrap=True)


def fail(err: HeadstartError | str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one error line on stderr and return the exit to raise."""
    err_console.print(f"[bold red]Error:[/] {escape(str(err))}", soft_wrap=True)
    return typer.Exit(getattr(err, "exit_code", code))


@contextlib.contextmanager
def cli_errors(interrupted: str = "Interrupted.") -> Iterator[None]:
    """Turn what a command can raise into one line and an exit code: a `HeadstartError` or an
    `OSError` (permissions, a full disk) exits 2, Ctrl-C prints ``interrupted`` and exits 130."""
    try:
        yield
    except typer.Exit:
        raise
    except HeadstartError as err:
        raise fail(err) from None
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        raise fail(f"{where}{err.strerror or err}") from None
    except KeyboardInterrupt:
        say(interrupted, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
