"""Shared steps of the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from temporalio.client import Client

from oddish.queue import create_task, get_task_with_trials
from oddish.replay import replay_history
from oddish.schemas import AgentRunConfig, TaskSubmission
from oddish.workflows import workflow_id_for_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tasks"


async def submit(
    client: Client,
    task: str,
    *configs: AgentRunConfig,
    priority: int = 0,
    run_analysis: bool = True,
    **fields: object,
) -> str:
    submission = TaskSubmission(
        task_path=EXAMPLES / task,
        configs=list(configs),
        priority=priority,
        run_analysis=run_analysis,
        **fields,
    )
    return await create_task(submission, client=client)


def local(agent: str = "oracle", n_trials: int = 1, **spec: object) -> AgentRunConfig:
    return AgentRunConfig(agent=agent, environment="local", n_trials=n_trials, **spec)


async def wait_for_task(client: Client, task_id: str, timeout: float = 300) -> dict:
    await asyncio.wait_for(
        client.get_workflow_handle(workflow_id_for_task(task_id)).result(), timeout
    )
    return await get_task_with_trials(task_id)


async def wait_until_running(task_id: str, timeout: float = 30) -> dict:
    """The task as soon as one of its trials runs."""
    for _ in range(int(timeout * 10)):
        task = await get_task_with_trials(task_id)
        if any(t["status"] == "running" for t in task["trials"]):
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"no trial of {task_id} started within {timeout}s")


HISTORIES = Path(__file__).resolve().parent / "histories"


async def check_history(client: Client, task_id: str, scenario: str) -> None:
    """Replay every run of the task's workflow against this code; with ODDISH_RECORD_HISTORIES=1
    also keep them under tests/histories, which test_replay replays on every later run."""
    handle_id = workflow_id_for_task(task_id)
    runs = [w.run_id async for w in client.list_workflows(f'WorkflowId = "{handle_id}"')]
    assert runs, f"no run of {handle_id} is visible"
    for number, run_id in enumerate(reversed(runs), start=1):
        history = await client.get_workflow_handle(handle_id, run_id=run_id).fetch_history()
        failure = await replay_history(history)
        assert failure is None, f"{scenario} run {number} does not replay: {failure}"
        if os.environ.get("ODDISH_RECORD_HISTORIES") == "1":
            HISTORIES.mkdir(exist_ok=True)
            (HISTORIES / f"{scenario}-run{number}.json").write_text(history.to_json())
