"""Stopping and deleting tasks: running work is stopped first, then rows and stored files go."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Coroutine
from typing import Any

from temporalio.client import Client

from oddish.config import get_settings
from oddish.db import records, slots
from oddish.db.connection import get_session
from oddish.statuses import TERMINAL_TASK_STATUSES
from oddish.task_store import discard_task_archives, remove_task_dir
from oddish.temporal_gateway import (
    cancel_task_workflow,
    task_workflow_running,
    terminate_task_workflow,
)
from oddish.workflows import workflow_id_for_task

# How long a delete waits for a cancelled task's sandboxes to be torn down.
STOP_TIMEOUT_SEC = 120.0
# Tasks of an experiment cancelled, stopped or deleted at once.
CONCURRENT_CALLS = 16


async def cancel_task(task_id: str, *, client: Client) -> str:
    """Ask the task's workflow to stop; returns the task's status now (``cancelling`` if
    running)."""
    async with get_session() as session:
        task = await records.get_task(session, task_id)
        if task.status in TERMINAL_TASK_STATUSES:
            return task.status
    if not await task_workflow_running(client, task_id):
        async with get_session() as session:
            await records.settle_abandoned_task(session, task_id)
            await session.commit()
        return "cancelled"
    await cancel_task_workflow(client, task_id)
    return "cancelling"


async def _bounded[T](calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The calls' results, at most CONCURRENT_CALLS of them at once: an experiment of
    thousands of tasks must not open thousands of Temporal calls and database sessions."""
    gate = asyncio.Semaphore(CONCURRENT_CALLS)

    async def one(call: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def cancel_experiment(experiment_id: str, *, client: Client) -> list[tuple[str, str]]:
    """Cancel every unfinished task of the experiment; returns (task id, status now) of each.
    Only the task ids are read: each workflow cancels its own trials."""
    async with get_session() as session:
        task_ids = await records.experiment_task_ids(session, experiment_id, unfinished=True)
    statuses = await _bounded([cancel_task(t, client=client) for t in task_ids])
    return list(zip(task_ids, statuses, strict=True))


async def _stop_and_wait(task_id: str, client: Client) -> None:
    await cancel_task(task_id, client=client)
    await _wait_stopped(task_id, client)


async def _wait_stopped(task_id: str, client: Client) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_TIMEOUT_SEC
    while await task_workflow_running(client, task_id):
        if loop.time() > deadline:
            await terminate_task_workflow(client, task_id, "deleted: did not stop in time")
            break
        await asyncio.sleep(0.5)


async def delete_task(task_id: str, *, client: Client) -> None:
    """Stop the task's running work, then delete what storage holds of it (its archive), its
    rows, and its local files (the copy of a task stored before archives, Harbor's output).

    Storage goes before the rows: when storage fails, the task is still there to delete again."""
    await _stop_and_wait(task_id, client)
    await _delete_stopped(task_id)


async def _delete_stopped(task_id: str) -> None:
    """Delete a stopped task: storage first, then its rows and slot rows, then local files."""
    await asyncio.to_thread(discard_task_archives, task_id)
    async with get_session() as session:
        await slots.release_workflow(
            await session.connection(),
            workflow_id=workflow_id_for_task(task_id),
            log_status="deleted",
        )
        # One DELETE; Postgres cascades to the trials, attempts, analyses and verdict.
        await records.delete_task_rows(session, task_id)
        await session.commit()
    # Trial output can be gigabytes: removed off the event loop.
    await asyncio.to_thread(remove_task_dir, task_id)
    await asyncio.to_thread(
        shutil.rmtree, get_settings().harbor_jobs_dir / task_id, ignore_errors=True
    )


async def delete_experiment(experiment_id: str, *, client: Client) -> int:
    """Delete every task of the experiment (stopping running ones first), then the experiment."""
    async with get_session() as session:
        task_ids = await records.experiment_task_ids(session, experiment_id)
    # Every cancel is asked for before any wait, so the tasks stop side by side.
    await _bounded([cancel_task(t, client=client) for t in task_ids])
    await _bounded([_wait_stopped(t, client) for t in task_ids])
    await _bounded([_delete_stopped(t) for t in task_ids])
    async with get_session() as session:
        await records.delete_experiment_rows(session, experiment_id)
        await session.commit()
    return len(task_ids)
