"""Submit a Harbor task through the library and wait for its verdict.

    uv run python examples/submit.py examples/tasks/hello-pass --agent oracle --n-trials 2

Talks to the same Postgres and Temporal as ``python -m oddish.worker`` (the embedded ones under
~/.oddish unless DATABASE_URL / ODDISH_TEMPORAL_ADDRESS say otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from oddish.config import get_settings
from oddish.embedded import ensure_embedded_services
from oddish.queue import create_task, get_task_with_trials
from oddish.schemas import AgentRunConfig, TaskSubmission
from oddish.temporal_gateway import connect
from oddish.workflows import workflow_id_for_task


async def main(args: argparse.Namespace) -> None:
    client = await connect()
    submission = TaskSubmission(
        task_path=args.task,
        configs=[
            AgentRunConfig(
                agent=args.agent, model=args.model, environment=args.env, n_trials=args.n_trials
            )
        ],
    )
    task_id = await create_task(submission, client=client)
    print(f"task {task_id}: workflow {workflow_id_for_task(task_id)}; waiting for its verdict...")
    await client.get_workflow_handle(workflow_id_for_task(task_id)).result()
    task = await get_task_with_trials(task_id)
    for trial in task["trials"]:
        print(
            f"  trial {trial['index']} {trial['agent']}: {trial['status']} "
            f"reward={trial['reward']} ({trial['outcome']})"
        )
    print(f"verdict: {task['verdict']['summary'] if task['verdict'] else task['status']}")
    if args.json:
        print(json.dumps(task, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", type=Path, help="a Harbor task directory (with task.toml)")
    parser.add_argument("--agent", default="oracle")
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--env", default="local", help="local, docker, daytona, ... or module:Class"
    )
    parser.add_argument("--n-trials", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the whole task as JSON")
    ensure_embedded_services(get_settings().home)
    asyncio.run(main(parser.parse_args()))
