"""``oddish up`` and ``oddish replay``: thin wrappers of ``oddish.up`` and ``oddish.replay``."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import typer
from rich.markup import escape

from oddish.cli.output import fail, print_json, stdout


def load(module: str, command: str) -> ModuleType:
    # Imported on use: these pull in the server side, which the client commands do not need.
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        fail(f"`oddish {command}` is not available in this installation ({module} is missing)")


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
    code = load("oddish.up", "up").run_up(
        port=port, temporal_port=temporal_port, ui_port=ui_port, home=home, host=host
    )
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
    replay_task = load("oddish.replay", "replay").replay_task

    async def replay_on_server() -> Any:
        from oddish.temporal_client import connect

        return await replay_task(task_id, await connect(temporal_address))

    try:
        result: Any = asyncio.run(replay_on_server())
    except RuntimeError as exc:
        if "connect" not in str(exc):
            raise
        fail(
            f"cannot reach Temporal at {temporal_address}; pass --temporal-address or set "
            "ODDISH_TEMPORAL_ADDRESS"
        )
    except Exception as exc:  # the replay reads Temporal: say what failed
        fail(f"replay of {task_id} failed: {type(exc).__name__}: {exc}")
    read = result.get if isinstance(result, dict) else lambda name: getattr(result, name, None)
    if not read("runs"):
        fail(str(read("message")))
    deterministic, message = bool(read("deterministic")), str(read("message") or "")
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
