"""The ``oddish`` command: the API client's commands, plus ``up`` and ``replay``."""

from __future__ import annotations

from oddish.cli import app
from oddish.server_commands import replay, up

app.command()(up)
app.command()(replay)


def main() -> None:
    app()
