"""A large task on the real stack: its trials run in batches (child workflows), each asking for
slots under its own workflow id; the real dispatcher grants them, the task's rows are all given
back at its end, a cancel tears every batch down, and the histories replay."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from helpers import (
    check_history,
    local,
    poll,
    reset_settings,
    slot_rows,
    submit,
    unique_key,
    until_started,
    wait_for_task,
)
from oddish import task_control
from oddish.config import get_settings
from oddish.queue import get_task_with_trials

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def small_batches():
    """Batches of 2 trials for what this process submits."""
    reset_settings(ODDISH_TRIAL_BATCH_SIZE="2")
    yield
    import os

    os.environ.pop("ODDISH_TRIAL_BATCH_SIZE", None)
    get_settings.cache_clear()


async def test_a_task_in_batches_runs_judges_and_gives_every_slot_back(
    start_worker, temporal_client: Client, small_batches: None
) -> None:
    key = unique_key("batches")
    start_worker("--n-concurrent", f'{{"{key}": 2}}')
    task_id = await submit(
        temporal_client, "hello-pass", local("oracle", 3, model=key), local("nop", 2, model=key)
    )
    task = await wait_for_task(temporal_client, task_id)

    assert task["status"] == "completed"
    assert sorted(t["reward"] for t in task["trials"]) == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert all(len(t["attempts"]) == 1 for t in task["trials"])
    assert all(t["analysis"]["classification"] == t["outcome"] for t in task["trials"])
    assert task["verdict"]["summary"] == "3/5 trials passed (mean reward 0.600)"
    assert await slot_rows(key) == 0
    found = [
        w.id
        async for w in temporal_client.list_workflows(
            f'WorkflowId STARTS_WITH "task/{task_id}/batch-"'
        )
    ]
    assert sorted(found) == [f"task/{task_id}/batch-{n}" for n in range(3)]
    await check_history(temporal_client, task_id, "batched")


async def test_cancelling_a_task_in_batches_stops_every_batch(
    start_worker, temporal_client: Client, small_batches: None
) -> None:
    key = unique_key("batches-cancel")
    start_worker("--n-concurrent", f'{{"{key}": 2}}')
    task_id = await submit(
        temporal_client,
        "sleep",
        local("oracle", 6, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "30"}),
    )
    await until_started(temporal_client, task_id)
    await poll(lambda: _running(task_id), timeout=60, what="two trials running")

    await task_control.cancel_task(task_id, client=temporal_client)

    async def cancelled() -> dict | None:
        task = await get_task_with_trials(task_id)
        return task if task["status"] == "cancelled" else None

    task = await poll(cancelled, timeout=120, what="the task cancelled")
    assert {t["status"] for t in task["trials"]} == {"cancelled"}
    assert await slot_rows(key) == 0


async def _running(task_id: str) -> bool:
    task = await get_task_with_trials(task_id)
    return sum(t["status"] == "running" for t in task["trials"]) == 2
