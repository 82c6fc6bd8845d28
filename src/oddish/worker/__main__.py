"""``python -m oddish.worker``: a Temporal worker plus the slot dispatcher. Run as many as you
like."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from oddish.config import get_settings
from oddish.options import (
    N_CONCURRENT_HELP,
    STORAGE_REFUSED_EXIT_CODE,
    limits_option,
    storage_problem,
)
from oddish.storage import StorageMisconfigured

app = typer.Typer(add_completion=False)


@app.command(
    help=__doc__
    + """

With no DATABASE_URL / ODDISH_DATABASE_URL it starts an embedded Postgres, and with no
ODDISH_TEMPORAL_ADDRESS an embedded Temporal dev server (Web UI on --ui-port), both keeping
their data under --home. A storage of task archives that cannot be used (ODDISH_STORAGE_DIR,
ODDISH_S3_*) refuses the start with one line naming the setting (exit code 2)."""
)
def main(
    n_concurrent: str = typer.Option(None, "--n-concurrent", help=N_CONCURRENT_HELP),
    max_concurrent_activities: int = typer.Option(
        100, min=1, help="activities (trials, analyses, records) this process runs at once"
    ),
    home: Path = typer.Option(
        None, help="data of embedded services [default: $ODDISH_HOME or ~/.oddish]"
    ),
    temporal_port: int = typer.Option(7233, help="port of the embedded Temporal server"),
    ui_port: int = typer.Option(8233, help="port of the embedded Temporal Web UI"),
) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    limits = limits_option(n_concurrent)

    # Before anything else is imported or started: one line naming the setting to fix.
    problem = storage_problem()
    if problem is not None:
        typer.echo(f"oddish: {problem}", err=True)
        raise typer.Exit(STORAGE_REFUSED_EXIT_CODE)

    from oddish.embedded import ensure_embedded_services
    from oddish.worker.runner import run_worker

    temporal = ensure_embedded_services(
        home or get_settings().home, temporal_port=temporal_port, ui_port=ui_port
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(
            stop, n_concurrent=limits, max_concurrent_activities=max_concurrent_activities
        )

    try:
        asyncio.run(serve())
    except StorageMisconfigured as exc:  # run_worker checks the storage again
        typer.echo(f"oddish: {exc}", err=True)
        raise typer.Exit(STORAGE_REFUSED_EXIT_CODE) from None
    finally:
        if temporal is not None:
            temporal.stop()


if __name__ == "__main__":
    app()
