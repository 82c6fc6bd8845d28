"""The ``oddish`` command line's client commands (Typer): they speak HTTP to the REST API only."""

from __future__ import annotations

import typer

from oddish import __version__
from oddish.cli.analyze import analyze
from oddish.cli.api_option import with_api_option
from oddish.cli.manage import cancel, clean, limits_app, retry
from oddish.cli.pull import pull
from oddish.cli.run import run
from oddish.cli.status import status
from oddish.cli.upload import upload

app = typer.Typer(
    name="oddish",
    help="""Run Harbor agent tasks durably: submit, walk away, watch, retry what failed.

    Every command talks to the oddish REST API at `--api URL`, else `$ODDISH_API_URL`, else
    `$ODDISH_DEFAULT_API_URL` (default http://localhost:8000) and sends `$ODDISH_API_KEY`, when
    set, as a bearer token. `oddish up` starts a local API with everything it needs.""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    # A traceback's locals could show the API key.
    pretty_exceptions_show_locals=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"oddish {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="print oddish's version and exit",
    ),
) -> None:
    """The commands below."""


for command in (run, status, cancel, retry, clean, pull, analyze, upload):
    app.command()(with_api_option(command))
# The original Oddish's name of `clean`: the same command.
app.command(
    "delete",
    help="The original Oddish's name of `clean`: delete a task, an experiment (`-e ID`), "
    "or every experiment. Asks first unless `--yes`.",
)(with_api_option(clean))
app.add_typer(limits_app, name="limits")
