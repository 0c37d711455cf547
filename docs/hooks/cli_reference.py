"""mkdocs hook: expose headstart's command line as a click command for mkdocs-click.

docs/reference.md asks mkdocs-click for `headstart_cli_reference:cli`; this hook builds that module
from the typer app itself, so the reference is generated from the commands and cannot drift.
"""

import sys
import types

import typer

from headstart.cli.main import app

module = types.ModuleType("headstart_cli_reference", __doc__)
module.cli = typer.main.get_command(app)
sys.modules[module.__name__] = module
