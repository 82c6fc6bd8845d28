"""``python -m oddish.db setup|init|reset|purge`` against DATABASE_URL / ODDISH_DATABASE_URL."""

from __future__ import annotations

import asyncio
from enum import StrEnum

import typer

from oddish.db import migrations
from oddish.db.connection import DatabaseNotConfigured, dispose_engine

app = typer.Typer(add_completion=False, help=__doc__)


class Action(StrEnum):
    setup = "setup"
    init = "init"
    install_pgqueuer = "install-pgqueuer"
    reset = "reset"
    purge = "purge"


HELP = """setup / init / install-pgqueuer: apply every migration (the slot table is one of them);
reset: drop all oddish tables and recreate them; purge: delete all data, keep the schema."""


@app.command(help=HELP)
def main(
    action: Action = typer.Argument(..., help="setup | init | install-pgqueuer | reset | purge"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before reset or purge"),
) -> None:
    if action in (Action.reset, Action.purge) and not yes:
        typer.confirm(f"{action.value} deletes every task and trial. Continue?", abort=True)

    async def run() -> None:
        try:
            if action == Action.reset:
                await migrations.drop_all()
            if action == Action.purge:
                await migrations.purge()
            else:
                await migrations.upgrade()
        finally:
            await dispose_engine()

    try:
        asyncio.run(run())
    except DatabaseNotConfigured as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{action.value}: done")


if __name__ == "__main__":
    app()
