"""The ``oddish`` command line's client commands (Typer): they speak HTTP to the REST API only."""

from __future__ import annotations

import typer

from oddish.cli.analyze import analyze
from oddish.cli.manage import cancel, clean, limits_app, retry
from oddish.cli.pull import pull
from oddish.cli.run import run
from oddish.cli.status import status

app = typer.Typer(
    name="oddish",
    help="""Run Harbor agent tasks durably: submit, walk away, watch, retry what failed.

    Every command talks to the oddish REST API at `$ODDISH_API_URL` (default
    http://localhost:8000) and sends `$ODDISH_API_KEY`, when set, as a bearer token.
    `oddish up` starts a local API with everything it needs.""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    # A traceback's locals could show the API key.
    pretty_exceptions_show_locals=False,
)
app.command()(run)
app.command()(status)
app.command()(cancel)
app.command()(retry)
app.command()(clean)
app.command()(pull)
app.command()(analyze)
app.add_typer(limits_app, name="limits")
