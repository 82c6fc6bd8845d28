"""Reads across tasks by name and status: the task browser, a task's versions, the counts of the
dashboard; and deleting one trial. Each is aggregated by Postgres, never row by row in Python."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by, array_agg
from sqlalchemy.ext.asyncio import AsyncSession

from oddish.db.models import ExperimentModel, TaskModel, TrialModel
from oddish.db.records import RecordNotFound
from oddish.statuses import JobStatus


def _first_of(column: Any, *order: Any) -> Any:
    """The group's first value of ``column`` in ``order``."""
    return array_agg(aggregate_order_by(column, *order))[1]


@dataclass(frozen=True)
class TaskVersion:
    """One distinct archive among the tasks of one name, numbered by first appearance."""

    version: int
    content_hash: str | None
    first_task_id: str
    task_path: str
    user: str | None
    created_at: datetime
    tasks_count: int


async def task_versions(session: AsyncSession, task_id: str) -> list[TaskVersion]:
    """The versions of the task's name, newest first. A task made before archives were hashed
    (no sha256) is a version of its own."""
    name = (
        await session.execute(select(TaskModel.name).where(TaskModel.id == task_id))
    ).scalar_one_or_none()
    if name is None:
        raise RecordNotFound(f"no task {task_id!r}")
    # A hash-less task is keyed by its own id, so it is not merged with other hash-less ones.
    key = func.coalesce(TaskModel.archive_sha256, TaskModel.id)
    first = func.min(TaskModel.created_at)
    rows = await session.execute(
        select(
            key.label("key"),
            func.max(TaskModel.archive_sha256).label("sha256"),
            first.label("created_at"),
            func.count().label("n"),
            # The first task of that version: its location and who submitted it.
            _first_of(TaskModel.id, TaskModel.created_at, TaskModel.id),
            _first_of(TaskModel.task_path, TaskModel.created_at, TaskModel.id),
            _first_of(TaskModel.user, TaskModel.created_at, TaskModel.id),
        )
        .where(TaskModel.name == name)
        .group_by(key)
        .order_by(first, key)
    )
    versions = [
        TaskVersion(
            version=number,
            content_hash=sha256,
            first_task_id=first_id,
            task_path=path,
            user=user,
            created_at=created_at,
            tasks_count=int(n),
        )
        for number, (_, sha256, created_at, n, first_id, path, user) in enumerate(
            rows.all(), start=1
        )
    ]
    return versions[::-1]


@dataclass(frozen=True)
class BrowsedTask:
    """Every task of one name in sum: its latest task, versions and trial counts."""

    latest_task_id: str
    name: str
    version_count: int
    task_count: int
    total_trials: int
    completed_trials: int
    failed_trials: int
    reward_success: int
    reward_total: int
    last_run_at: datetime | None
    experiments: list[tuple[str, str]]


async def browse_tasks(
    session: AsyncSession, *, limit: int, offset: int, query: str | None
) -> tuple[list[BrowsedTask], bool]:
    """One page of task names, most recently submitted first, and whether more follow."""
    tasks = select(TaskModel.id, TaskModel.name, TaskModel.created_at, TaskModel.archive_sha256)
    if query:
        tasks = tasks.where(TaskModel.name.ilike(f"%{_escape_like(query)}%", escape="\\"))
    task_rows = tasks.subquery()
    names = (
        select(
            task_rows.c.name,
            func.max(task_rows.c.created_at).label("last_created"),
            _first_of(task_rows.c.id, task_rows.c.created_at.desc(), task_rows.c.id).label(
                "latest_id"
            ),
            func.count(
                func.distinct(func.coalesce(task_rows.c.archive_sha256, task_rows.c.id))
            ).label("versions"),
            func.count().label("tasks"),
        )
        .group_by(task_rows.c.name)
        .order_by(func.max(task_rows.c.created_at).desc(), task_rows.c.name)
        .limit(limit + 1)
        .offset(offset)
    )
    page = (await session.execute(names)).all()
    has_more = len(page) > limit
    page = page[:limit]
    if not page:
        return [], has_more
    page_names = [row.name for row in page]
    trials = await session.execute(
        select(
            TaskModel.name,
            func.count(TrialModel.id),
            func.count(TrialModel.id).filter(TrialModel.status == JobStatus.SUCCESS),
            func.count(TrialModel.id).filter(TrialModel.status == JobStatus.FAILED),
            func.count(TrialModel.id).filter(TrialModel.reward >= 1),
            func.count(TrialModel.reward),
            func.max(func.coalesce(TrialModel.finished_at, TrialModel.started_at)),
        )
        .join(TrialModel, TrialModel.task_id == TaskModel.id)
        .where(TaskModel.name.in_(page_names))
        .group_by(TaskModel.name)
    )
    counts = {row[0]: row[1:] for row in trials.all()}
    experiments = await session.execute(
        select(TaskModel.name, ExperimentModel.id, ExperimentModel.name)
        .join(ExperimentModel, ExperimentModel.id == TaskModel.experiment_id)
        .where(TaskModel.name.in_(page_names))
        .distinct()
        .order_by(TaskModel.name, ExperimentModel.id)
    )
    by_name: dict[str, list[tuple[str, str]]] = {}
    for task_name, experiment_id, experiment_name in experiments.all():
        by_name.setdefault(task_name, []).append((experiment_id, experiment_name))
    browsed = []
    for row in page:
        total, done, failed, passed, rewarded, last = counts.get(row.name, (0, 0, 0, 0, 0, None))
        browsed.append(
            BrowsedTask(
                latest_task_id=row.latest_id,
                name=row.name,
                version_count=int(row.versions),
                task_count=int(row.tasks),
                total_trials=int(total),
                completed_trials=int(done),
                failed_trials=int(failed),
                reward_success=int(passed),
                reward_total=int(rewarded),
                last_run_at=last,
                experiments=by_name.get(row.name, []),
            )
        )
    return browsed, has_more


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def experiments_page(
    session: AsyncSession, *, limit: int, offset: int
) -> tuple[list[tuple[ExperimentModel, int]], bool]:
    """A page of experiments, newest first, each with its task count; and whether more follow."""
    rows = await session.execute(
        select(ExperimentModel, func.count(TaskModel.id))
        .outerjoin(TaskModel, TaskModel.experiment_id == ExperimentModel.id)
        .group_by(ExperimentModel.id)
        .order_by(ExperimentModel.created_at.desc(), ExperimentModel.id)
        .limit(limit + 1)
        .offset(offset)
    )
    page = [(experiment, int(n)) for experiment, n in rows.all()]
    return page[:limit], len(page) > limit


async def status_counts(session: AsyncSession) -> tuple[dict[str, int], dict[str, int]]:
    """Tasks per status and trials per status, over everything recorded."""
    tasks = await session.execute(select(TaskModel.status, func.count()).group_by(TaskModel.status))
    trials = await session.execute(
        select(TrialModel.status, func.count()).group_by(TrialModel.status)
    )
    return (
        {status: int(n) for status, n in tasks.all()},
        {status: int(n) for status, n in trials.all()},
    )


async def trial_for_deletion(session: AsyncSession, trial_id: str) -> tuple[str, str, str]:
    """(task id, trial status, task status) of the trial, its row locked until the transaction
    ends so nothing records on it meanwhile."""
    row = (
        await session.execute(
            select(TrialModel.task_id, TrialModel.status, TaskModel.status)
            .join(TaskModel, TaskModel.id == TrialModel.task_id)
            .where(TrialModel.id == trial_id)
            .with_for_update(of=TrialModel)
        )
    ).one_or_none()
    if row is None:
        raise RecordNotFound(f"no trial {trial_id!r}")
    return row[0], row[1], row[2]


async def delete_trial_row(session: AsyncSession, trial_id: str) -> None:
    """Delete the trial; Postgres cascades to its attempts and analysis."""
    await session.execute(delete(TrialModel).where(TrialModel.id == trial_id))
