"""mkdocs hook: the generated CLI reference, and the pages that are files at the repository's root.

docs/reference.md asks mkdocs-click for `headstart_cli_reference:cli`; this hook builds that module
from the typer app itself, so the reference is generated from the commands and cannot drift.
docs/architecture.md and docs/benchmarks.md are ARCHITECTURE.md and bench/README.md, read here so
that their links, written from the root (`docs/safety.md`), point at the site's pages.
"""

import re
import sys
import types
from pathlib import Path

import typer

from headstart.cli.main import app

module = types.ModuleType("headstart_cli_reference", __doc__)
module.cli = typer.main.get_command(app)
sys.modules[module.__name__] = module

ROOT = Path(__file__).resolve().parents[2]
FROM_ROOT = {"architecture.md": "ARCHITECTURE.md", "benchmarks.md": "bench/README.md"}


def on_page_markdown(markdown, page, config, files):
    source = FROM_ROOT.get(page.file.src_uri)
    if source is None:
        return markdown
    text = (ROOT / source).read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)
