"""``oddish up`` and ``oddish replay``: the two commands that run server-side code rather than
talk to the API, kept out of ``oddish.cli`` so that the client stays HTTP-only. Their modules are
imported on use: the client commands start faster without them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import typer
from rich.markup import escape

from oddish.cli.output import fail, print_json, stdout


def up(
    port: int = typer.Option(8000, "--port", help="port of the REST API"),
    temporal_port: int = typer.Option(
        7233, "--temporal-port", help="port of the embedded Temporal server"
    ),
    ui_port: int = typer.Option(8233, "--ui-port", help="port of the Temporal Web UI"),
    home: Path | None = typer.Option(
        None,
        "--home",
        show_default=False,
        help="data of the embedded services [default: ~/.oddish or $ODDISH_HOME]",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address the API listens on (0.0.0.0 for every interface)"
    ),
) -> None:
    """Start oddish on this machine: Postgres, Temporal and its Web UI, the API, a worker.

    Runs until Ctrl+C; meanwhile `oddish run` and `oddish status` talk to it.
    """
    from oddish.up import run_up

    code = run_up(port=port, temporal_port=temporal_port, ui_port=ui_port, home=home, host=host)
    raise typer.Exit(code)


def replay(
    task_id: str = typer.Argument(..., help="a task id (task-...)"),
    temporal_address: str = typer.Option(
        "localhost:7233",
        "--temporal-address",
        envvar="ODDISH_TEMPORAL_ADDRESS",
        help="the Temporal server the task's workflow ran on (host:port)",
    ),
    json_output: bool = typer.Option(False, "--json", help="print JSON only"),
) -> None:
    """Check a task's recorded workflow history replays on this version of the code.

    Exits 0 when the code reproduces the history (deterministic), 1 when it does not: a sign
    that a workflow change needs `workflow.patched` before it is deployed next to running tasks.
    """
    try:
        _replay(task_id, temporal_address, json_output)
        code = 0
    except typer.Exit as done:
        code = done.exit_code
    # The Temporal client's threads (its Rust core) outlive the event loop, and CPython's
    # finalisation may crash on them (temporalio/sdk-python#300: a segfault after the answer was
    # printed): a finished replay exits without it, its output flushed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _replay(task_id: str, temporal_address: str, json_output: bool) -> None:
    from oddish.replay import ReplayReport, replay_task
    from oddish.temporal_gateway import connect

    async def replay_on_server() -> ReplayReport:
        return await replay_task(task_id, await connect(temporal_address))

    try:
        report = asyncio.run(replay_on_server())
    except RuntimeError as exc:
        if "connect" not in str(exc):
            raise
        fail(
            f"cannot reach Temporal at {temporal_address}; pass --temporal-address or set "
            "ODDISH_TEMPORAL_ADDRESS"
        )
    except Exception as exc:  # the replay reads Temporal: say what failed
        fail(f"replay of {task_id} failed: {type(exc).__name__}: {exc}")
    if not report.runs:
        fail(report.message)
    deterministic, message = report.deterministic, report.message
    if json_output:
        print_json({"task_id": task_id, "deterministic": deterministic, "message": message})
    else:
        style = "green" if deterministic else "red"
        stdout.print(
            f"[{style}]{'deterministic' if deterministic else 'NOT deterministic'}"
            f"[/{style}]: {escape(message)}",
            highlight=False,
        )
    raise typer.Exit(0 if deterministic else 1)
