"""The `headstart` command line: one module per command group, wired together in `main`."""

from headstart.cli.main import app, run

__all__ = ["app", "run"]
