"""The original Oddish's views across tasks, served from our records: the task browser, a task's
versions, the dashboard's counts; and deleting one finished trial."""

from __future__ import annotations

import asyncio
from typing import Any

from oddish import queue
from oddish.db import catalog
from oddish.db.connection import get_session
from oddish.db.records import RecordNotFound
from oddish.statuses import TERMINAL_JOB_STATUSES, TERMINAL_TASK_STATUSES
from oddish.storage import get_storage
from oddish.storage.keys import task_prefix


class TrialBusy(Exception):
    """The trial, or its task, is still at work: it cannot be deleted now."""


def _version_dict(task_id: str, version: catalog.TaskVersion) -> dict[str, Any]:
    return {
        # Ours has no version rows: a version is one archive (sha256) among the tasks of a name,
        # named by the first task that ran it.
        "id": version.first_task_id,
        "task_id": task_id,
        "version": version.version,
        "task_path": version.task_path,
        "content_hash": version.content_hash,
        "message": None,
        "created_by_user_id": version.user,
        "created_at": version.created_at.isoformat(),
        "tasks_count": version.tasks_count,
    }


async def task_versions(task_id: str) -> list[dict[str, Any]]:
    """The versions of the task's name, newest first."""
    async with get_session() as session:
        versions = await catalog.task_versions(session, task_id)
    return [_version_dict(task_id, v) for v in versions]


async def task_version(task_id: str, version: int) -> dict[str, Any]:
    for found in await task_versions(task_id):
        if found["version"] == version:
            return found
    raise RecordNotFound(f"task {task_id!r} has no version {version}")


async def browse_tasks(*, limit: int, offset: int, query: str | None) -> dict[str, Any]:
    async with get_session() as session:
        page, has_more = await catalog.browse_tasks(
            session, limit=limit, offset=offset, query=query
        )
        versions = {
            b.latest_task_id: (await catalog.task_versions(session, b.latest_task_id))[0]
            for b in page
        }
    return {
        "items": [
            {
                "id": b.latest_task_id,
                "name": b.name,
                "current_version": versions[b.latest_task_id].version,
                "current_version_id": versions[b.latest_task_id].first_task_id,
                "version_count": b.version_count,
                "tasks_count": b.task_count,
                "total_trials": b.total_trials,
                "completed_trials": b.completed_trials,
                "failed_trials": b.failed_trials,
                "reward_success": b.reward_success,
                "reward_total": b.reward_total,
                "last_run_at": b.last_run_at.isoformat() if b.last_run_at else None,
                "experiments": [{"id": i, "name": n} for i, n in b.experiments],
            }
            for b in page
        ],
        "limit": limit,
        "offset": offset,
        "has_more": has_more,
    }


async def dashboard(
    *, tasks_limit: int, tasks_offset: int, experiments_limit: int, experiments_offset: int
) -> dict[str, Any]:
    """Per queue key its slots, tasks and trials per status, a page of tasks and experiments."""
    async with get_session() as session:
        task_counts, trial_counts = await catalog.status_counts(session)
        rows, more_experiments = await catalog.experiments_page(
            session, limit=experiments_limit, offset=experiments_offset
        )
        experiments = await queue.listed_experiments(session, rows)
    tasks = await queue.list_tasks(limit=tasks_limit, offset=tasks_offset)
    return {
        "queues": await queue.get_queue_stats(),
        "pipeline": {"tasks": task_counts, "trials": trial_counts},
        "tasks": tasks["tasks"],
        "tasks_limit": tasks_limit,
        "tasks_offset": tasks_offset,
        "has_more": tasks["next_offset"] is not None,
        "experiments": experiments,
        "experiments_limit": experiments_limit,
        "experiments_offset": experiments_offset,
        "experiments_has_more": more_experiments,
    }


async def delete_trial(trial_id: str) -> str:
    """Delete a finished trial of a finished task: its stored output, then its rows. The task's
    verdict is not redone. Returns the task's id; TrialBusy while either is at work."""
    async with get_session() as session:
        task_id, trial_status, task_status = await catalog.trial_for_deletion(session, trial_id)
        if trial_status not in TERMINAL_JOB_STATUSES or task_status not in TERMINAL_TASK_STATUSES:
            raise TrialBusy(
                f"trial {trial_id} is {trial_status} and its task {task_id} is {task_status}: "
                "cancel the task first (oddish cancel), or wait until it is done"
            )
        # Storage first: when it fails, the row is still there to delete again.
        prefix = f"{task_prefix(task_id)}trials/{trial_id}/"
        await asyncio.to_thread(get_storage().delete_prefix, prefix)
        await catalog.delete_trial_row(session, trial_id)
        await session.commit()
    return task_id
