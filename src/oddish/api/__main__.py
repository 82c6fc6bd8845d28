"""``python -m oddish.api``: the REST API, with a worker in the same process unless --no-workers."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import typer
import uvicorn

from oddish.api import exposure
from oddish.config import get_settings
from oddish.options import (
    N_CONCURRENT_HELP,
    STORAGE_REFUSED_EXIT_CODE,
    limits_option,
    storage_problem,
)

app = typer.Typer(add_completion=False)


@app.command(
    help=__doc__
    + """

With no DATABASE_URL / ODDISH_DATABASE_URL or ODDISH_TEMPORAL_ADDRESS it starts the embedded
Postgres and Temporal dev server, as the worker does. OpenAPI docs are served at /docs.

On an address other than loopback it refuses to start (exit code 2) unless ODDISH_API_KEY is
set; it answers only the Host names of ODDISH_TRUSTED_HOSTS and the address it listens on. A
storage of task archives that cannot be used (ODDISH_STORAGE_DIR, ODDISH_S3_*) refuses the start
too, with one line naming the setting (exit code 2)."""
)
def main(
    host: str = typer.Option(
        "127.0.0.1", help="address to listen on (beyond loopback, ODDISH_API_KEY is required)"
    ),
    port: int = typer.Option(8000, help="port to listen on"),
    n_concurrent: str = typer.Option(None, "--n-concurrent", help=N_CONCURRENT_HELP),
    workers: bool = typer.Option(
        True, "--workers/--no-workers", help="run a worker in this process (default) or not"
    ),
    home: Path = typer.Option(None, help="data of embedded services [default: ~/.oddish]"),
) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    limits = limits_option(n_concurrent)
    problem = exposure.exposure_problem(host)
    if problem is not None:
        typer.echo(f"oddish: {problem}", err=True)
        raise typer.Exit(exposure.REFUSED_EXIT_CODE)
    if (note := exposure.host_note(host)) is not None:
        logging.getLogger("oddish.api").warning("%s", note)

    # Before anything else is imported or started: one line naming the setting to fix.
    problem = storage_problem()
    if problem is not None:
        typer.echo(f"oddish: {problem}", err=True)
        raise typer.Exit(STORAGE_REFUSED_EXIT_CODE)

    from oddish.api.app import create_app
    from oddish.embedded import ensure_embedded_services

    temporal = ensure_embedded_services(home or get_settings().home)
    # uvicorn shuts down on SIGTERM, then raises it again under the handler it found: with the
    # default one the process would die before stopping the Temporal server and Postgres it owns.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        app = create_app(run_workers=workers, n_concurrent=limits)
        uvicorn.run(exposure.guard_hosts(app, host), host=host, port=port)
    finally:
        if temporal is not None:
            temporal.stop()


if __name__ == "__main__":
    app()
