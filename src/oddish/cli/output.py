"""Where the CLI writes: data on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Piped into a file or a CI log there is no terminal to fit: 80 columns would fold every id and
# number of a table, so such output gets room for a table's widest row (COLUMNS still wins).
PIPED_WIDTH = 160


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


stdout = _console()
stderr = _console(stderr=True)


def print_json(data: Any) -> None:
    # Plain write, not rich: rich would wrap long lines and colour them, breaking `| jq`.
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
