"""`python -m headstart.cli`: the same as the `headstart` command."""

import sys

from headstart.cli.main import app

sys.exit(app())
