"""Aggregates of trials computed by Postgres: an experiment of 100k trials is read as a few
dozen grouped rows, never as its trial rows (``oddish.trial_stats`` turns them into the views)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, null, select
from sqlalchemy.ext.asyncio import AsyncSession

from oddish.db.models import AnalysisModel, TaskModel, TrialModel, VerdictModel, trial_rollups
from oddish.statuses import (
    ERROR_RESULTS,
    SCORED_RESULTS,
    TrialResult,
)


def trial_result_sql() -> ColumnElement[str | None]:
    """``oddish.outcomes.trial_result`` of a trial row, in SQL (NULL until it finished): the
    function migration 0007 defines, which the triggers of ``trial_rollups`` also use."""
    return func.oddish_trial_result(TrialModel.status, TrialModel.outcome, TrialModel.reward)


@dataclass(frozen=True)
class AgentUsage:
    """What the agents of a group of trials used: tokens and cost as Harbor reported them
    (None when no trial reported a cost), and the wall time of the trials that ran to an end."""

    n_input_tokens: int = 0
    n_cache_tokens: int = 0
    n_output_tokens: int = 0
    cost_usd: float | None = None
    timed_trials: int = 0
    duration_sec: float = 0.0

    def __add__(self, other: AgentUsage) -> AgentUsage:
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        return AgentUsage(
            n_input_tokens=self.n_input_tokens + other.n_input_tokens,
            n_cache_tokens=self.n_cache_tokens + other.n_cache_tokens,
            n_output_tokens=self.n_output_tokens + other.n_output_tokens,
            cost_usd=sum(costs) if costs else None,
            timed_trials=self.timed_trials + other.timed_trials,
            duration_sec=self.duration_sec + other.duration_sec,
        )


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
    """The trials of one task by one agent/model in one status, outcome and result: how many,
    the sum of their rewards (missing as 0), and the sum of the rewards they have (NaN as 0)."""

    task_id: str
    agent: str
    model: str | None
    status: str
    outcome: str | None
    result: str | None
    trials: int
    reward_sum: float
    score_sum: float


def _agent_usage_columns() -> list[Any]:
    r = trial_rollups.c
    return [
        func.sum(r.n_input_tokens),
        func.sum(r.n_cache_tokens),
        func.sum(r.n_output_tokens),
        # None when no trial reported a cost, as a sum over the trial rows gives.
        case((func.sum(r.cost_trials) > 0, func.sum(r.cost_usd)), else_=null()),
        func.sum(r.timed_trials),
        func.sum(r.duration_sec),
    ]


def _trials_where(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    """How many trials of the rollup rows summed meet ``condition`` (0 when none does)."""
    return func.coalesce(func.sum(trial_rollups.c.trials).filter(condition), 0)


def _reward_sum(nan_rewards: Any, score_sum: Any) -> float:
    """The sum of the rewards, a missing one as 0: a NaN among them makes it NaN, as a sum over
    the trial rows does."""
    return math.nan if nan_rewards else float(score_sum)


def _agent_usage(
    tokens_in: Any, tokens_cache: Any, tokens_out: Any, cost: Any, timed: Any, seconds: Any
) -> AgentUsage:
    return AgentUsage(
        int(tokens_in),
        int(tokens_cache),
        int(tokens_out),
        None if cost is None else float(cost),
        int(timed),
        float(seconds),
    )


@dataclass(frozen=True)
class AgentModelGroup:
    """The trials of one agent/model in one (status, outcome, result) over a whole experiment:
    how many, how many passed, the sum of their rewards with a missing reward counted as 0, the
    sum of the rewards they have with a NaN counted as 0 (what ``oddish.pass_rates``
    averages), and what their agents used."""

    agent: str
    model: str | None
    status: str
    outcome: str | None
    result: str | None
    trials: int
    passed: int
    reward_sum: float
    score_sum: float
    usage: AgentUsage


@dataclass(frozen=True)
class TaskShape:
    """How many tasks of an experiment an agent/model ran (trials of), that had ``scored``
    trials with a reward, ``passed`` of which passed: all pass@k needs of them."""

    agent: str
    model: str | None
    scored: int
    passed: int
    tasks: int


def _experiment_trials(experiment_id: str) -> ColumnElement[bool]:
    # A subquery rather than a join: the trials are found by the tasks' ids, no task column
    # rides along into the grouping.
    return TrialModel.task_id.in_(
        select(TaskModel.id).where(TaskModel.experiment_id == experiment_id).scalar_subquery()
    )


async def experiment_agent_model_groups(
    session: AsyncSession, experiment_id: str
) -> list[AgentModelGroup]:
    """The experiment's trials by agent, model, status, outcome and result: a few dozen rows
    however many trials, summed from ``trial_rollups``; every figure but pass@k's
    (``experiment_task_shapes``)."""
    r = trial_rollups.c
    rows = await session.execute(
        select(
            r.agent,
            r.model,
            r.status,
            r.outcome,
            r.result,
            func.sum(r.trials),
            func.sum(r.passed),
            func.sum(r.nan_rewards),
            func.sum(r.score_sum),
            *_agent_usage_columns(),
        )
        .where(r.experiment_id == experiment_id)
        .group_by(r.agent, r.model, r.status, r.outcome, r.result)
        .having(func.sum(r.trials) > 0)
    )
    groups = []
    for row in rows.all():
        values: tuple[Any, ...] = tuple(row)
        agent, model, status, outcome, result, n, passed, nan_rewards, scores = values[:9]
        groups.append(
            AgentModelGroup(
                agent,
                model,
                status,
                outcome,
                result,
                int(n),
                int(passed),
                _reward_sum(nan_rewards, scores),
                float(scores),
                _agent_usage(*values[9:]),
            )
        )
    return groups


async def experiment_task_shapes(session: AsyncSession, experiment_id: str) -> list[TaskShape]:
    """Per agent/model, its tasks counted by (trials scored, trials passed): Postgres sums each
    task's rollup rows and then counts the tasks, so a few hundred rows come back, not one per
    task."""
    r = trial_rollups.c
    cells = (
        select(
            r.agent,
            r.model,
            _trials_where(r.result.in_([x.value for x in SCORED_RESULTS])).label("scored"),
            _trials_where(r.result == TrialResult.PASSED.value).label("passed"),
        )
        .where(r.experiment_id == experiment_id)
        .group_by(r.task_id, r.agent, r.model)
        .having(func.sum(r.trials) > 0)
        .subquery()
    )
    rows = await session.execute(
        select(cells.c.agent, cells.c.model, cells.c.scored, cells.c.passed, func.count()).group_by(
            cells.c.agent, cells.c.model, cells.c.scored, cells.c.passed
        )
    )
    return [
        TaskShape(agent, model, int(scored), int(passed), int(n))
        for agent, model, scored, passed, n in rows.all()
    ]


async def experiment_judge_usage(session: AsyncSession, experiment_id: str) -> JudgeUsage:
    """What the judge's analyses of the experiment's trials and its verdicts of the
    experiment's tasks cost."""
    analyses = (
        await session.execute(
            select(*_usage_columns(AnalysisModel, AnalysisModel.trial_id))
            .join(TrialModel, TrialModel.id == AnalysisModel.trial_id)
            .where(AnalysisModel.model.is_not(None), _experiment_trials(experiment_id))
        )
    ).one()
    return _usage(*analyses) + await experiment_verdict_usage(session, experiment_id)


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
    """Per task, agent/model, trial status, outcome and result: the trials and the sums of
    their rewards (``trial_rollups``' rows of the tasks, as they are)."""
    if not task_ids:
        return []
    r = trial_rollups.c
    rows = await session.execute(
        select(
            r.task_id,
            r.agent,
            r.model,
            r.status,
            r.outcome,
            r.result,
            r.trials,
            r.nan_rewards,
            r.score_sum,
        ).where(r.task_id.in_(task_ids), r.trials > 0)
    )
    return [
        TaskStatusCount(
            task_id,
            agent,
            model,
            status,
            outcome,
            result,
            int(n),
            _reward_sum(nan_rewards, scores),
            float(scores),
        )
        for task_id, agent, model, status, outcome, result, n, nan_rewards, scores in rows.all()
    ]


@dataclass(frozen=True)
class ExperimentTotals:
    """An experiment's trials in figures for a list: how many, how many ended, how many got a
    reward (scored: passed, partial or failed), how many passed, how many ended in an error or
    were cancelled, and what their agents cost (None when none reported a cost). The results
    are ``oddish.outcomes.trial_result``'s, as in every ``scores``."""

    experiment_id: str
    trials: int
    finished: int
    scored: int
    passed: int
    errored: int
    cost_usd: float | None


async def experiment_totals(
    session: AsyncSession, experiment_ids: list[str]
) -> dict[str, ExperimentTotals]:
    """Per experiment: its trials counted by what they amounted to, and the agents' cost."""
    if not experiment_ids:
        return {}
    r = trial_rollups.c
    rows = await session.execute(
        select(
            r.experiment_id,
            func.sum(r.trials),
            _trials_where(r.result.is_not(None)),
            _trials_where(r.result.in_([x.value for x in SCORED_RESULTS])),
            _trials_where(r.result == TrialResult.PASSED.value),
            _trials_where(r.result.in_([x.value for x in ERROR_RESULTS])),
            case((func.sum(r.cost_trials) > 0, func.sum(r.cost_usd)), else_=null()),
        )
        .where(r.experiment_id.in_(experiment_ids))
        .group_by(r.experiment_id)
        .having(func.sum(r.trials) > 0)
    )
    return {
        experiment_id: ExperimentTotals(
            experiment_id,
            int(n),
            int(finished),
            int(scored),
            int(passed),
            int(errored),
            None if cost is None else float(cost),
        )
        for experiment_id, n, finished, scored, passed, errored, cost in rows.all()
    }
