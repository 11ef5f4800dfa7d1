"""``granalign`` command line: every command module registers itself on the shared app."""

from __future__ import annotations

import sys

from tools import cli_bench, cli_benchmark, cli_experiment, cli_index, cli_mcp, cli_shift, cli_store  # noqa: F401  (registers the commands)
from tools.cli_common import app

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
