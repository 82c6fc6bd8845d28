"""Aggregates of trials computed by Postgres: an experiment of 100k trials is read as a few
dozen grouped rows, never as its trial rows (``oddish.trial_stats`` turns them into the views)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from oddish.db.models import AnalysisModel, TaskModel, TrialModel, VerdictModel


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
    judge: JudgeUsage


@dataclass(frozen=True)
class JudgeUsage:
    """What the judge's calls cost: calls (answered or failed), failed ones, tokens, and the
    cost in USD (None when no call's cost is known)."""

    calls: int = 0
    errors: int = 0
    n_input_tokens: int = 0
    n_output_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: JudgeUsage) -> JudgeUsage:
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        return JudgeUsage(
            calls=self.calls + other.calls,
            errors=self.errors + other.errors,
            n_input_tokens=self.n_input_tokens + other.n_input_tokens,
            n_output_tokens=self.n_output_tokens + other.n_output_tokens,
            cost_usd=sum(costs) if costs else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _usage_columns(table: type[AnalysisModel] | type[VerdictModel], key: Any) -> list[Any]:
    # Calls are counted by ``key``, a column of the row the judge answered: the rows are
    # already those with a model, and the partial index of judged analyses holds the key.
    return [
        func.count(key),
        func.count(table.error_message),
        func.coalesce(func.sum(table.n_input_tokens), 0),
        func.coalesce(func.sum(table.n_output_tokens), 0),
        func.sum(table.cost_usd),
    ]


def _usage(calls: int, errors: int, tokens_in: Any, tokens_out: Any, cost: Any) -> JudgeUsage:
    return JudgeUsage(
        int(calls),
        int(errors),
        int(tokens_in or 0),
        int(tokens_out or 0),
        None if cost is None else float(cost),
    )


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
            *_usage_columns(AnalysisModel, AnalysisModel.trial_id),
        )
        .join(TaskModel, TaskModel.id == TrialModel.task_id)
        # The judge's analyses ride along in the same scan (few of them, by a partial index),
        # rather than a second pass over the experiment's trials to find them.
        .outerjoin(
            AnalysisModel,
            (AnalysisModel.trial_id == TrialModel.id) & AnalysisModel.model.is_not(None),
        )
        .where(TaskModel.experiment_id == experiment_id)
        .group_by(TrialModel.agent, TrialModel.model, TrialModel.status, TrialModel.outcome)
    )
    return [
        TrialGroup(agent, model, status, outcome, int(n), int(passed), float(total), _usage(*usage))
        for agent, model, status, outcome, n, passed, total, *usage in rows.all()
    ]


async def experiment_verdict_usage(session: AsyncSession, experiment_id: str) -> JudgeUsage:
    """What the judge's verdicts of the experiment's tasks cost."""
    row = (
        await session.execute(
            select(*_usage_columns(VerdictModel, VerdictModel.model))
            .join(TaskModel, TaskModel.id == VerdictModel.task_id)
            .where(TaskModel.experiment_id == experiment_id, VerdictModel.model.is_not(None))
        )
    ).one()
    return _usage(*row)


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
