"""Aggregates of trials computed by Postgres: an experiment of 100k trials is read as a few
dozen grouped rows, never as its trial rows (``oddish.trial_stats`` turns them into the views)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from oddish.db.models import TaskModel, TrialModel


@dataclass(frozen=True)
class TrialGroup:
    """The trials of one (agent, model, status, outcome): how many, how many passed, and the
    sum of their rewards with a missing reward counted as 0."""

    agent: str
    model: str | None
    status: str
    outcome: str | None
    trials: int
    passed: int
    reward_sum: float


@dataclass(frozen=True)
class TaskStatusCount:
    """The trials of one task in one status, and the sum of their rewards (missing as 0)."""

    task_id: str
    status: str
    trials: int
    reward_sum: float


async def experiment_trial_groups(
    session: AsyncSession, experiment_id: str, *, pass_threshold: float
) -> list[TrialGroup]:
    """Every (agent, model, status, outcome) group of the experiment's trials."""
    # A trial without a reward (it failed before scoring) counts as 0, as in trial_stats.
    reward = func.coalesce(TrialModel.reward, 0.0)
    rows = await session.execute(
        select(
            TrialModel.agent,
            TrialModel.model,
            TrialModel.status,
            TrialModel.outcome,
            func.count(),
            # NaN sorts above every number in Postgres but compares false in Python: excluded,
            # as the Python computation does.
            func.count().filter((reward >= pass_threshold) & (reward != float("nan"))),
            func.coalesce(func.sum(reward), 0.0),
        )
        .join(TaskModel, TaskModel.id == TrialModel.task_id)
        .where(TaskModel.experiment_id == experiment_id)
        .group_by(TrialModel.agent, TrialModel.model, TrialModel.status, TrialModel.outcome)
    )
    return [
        TrialGroup(agent, model, status, outcome, int(n), int(passed), float(total))
        for agent, model, status, outcome, n, passed, total in rows.all()
    ]


async def task_status_counts(session: AsyncSession, task_ids: list[str]) -> list[TaskStatusCount]:
    """Per task and trial status: the trials and the sum of their rewards."""
    if not task_ids:
        return []
    reward = func.coalesce(TrialModel.reward, 0.0)
    rows = await session.execute(
        select(
            TrialModel.task_id,
            TrialModel.status,
            func.count(),
            func.coalesce(func.sum(reward), 0.0),
        )
        .where(TrialModel.task_id.in_(task_ids))
        .group_by(TrialModel.task_id, TrialModel.status)
    )
    return [
        TaskStatusCount(task_id, status, int(n), float(total))
        for task_id, status, n, total in rows.all()
    ]
