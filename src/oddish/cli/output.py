"""Where the CLI writes: data on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

stdout = Console()
stderr = Console(stderr=True)


def print_json(data: Any) -> None:
    # Plain write, not rich: rich would wrap long lines and colour them, breaking `| jq`.
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
