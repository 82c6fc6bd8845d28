"""Counts, pass rate and mean reward of a set of trials, overall and per agent/model.

Two sources give the same figures: trial rows (a task's verdict, a few hundred trials), and the
groups Postgres aggregates (``oddish.db.stats``) for views of whole experiments, where loading
every row would cost seconds and hundreds of MB.

``pass_rate`` and ``mean_reward`` count every trial, a missing reward as 0 (what the verdict
was always given); ``scores`` are the figures of ``oddish.pass_rates``, over the trials that got
a reward, errors counted apart. Trial rows make per-task cells for it; an experiment's groups
are by agent/model and result, its tasks counted by (scored, passed) for pass@k."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from oddish.db.models import TrialModel
from oddish.db.stats import AgentModelGroup, AgentUsage, TaskShape, TaskStatusCount
from oddish.outcomes import PASS_REWARD, trial_result
from oddish.pass_rates import UNFINISHED, CellTotals, TaskCell, summarize, summarize_totals
from oddish.statuses import ERROR_RESULTS, SCORED_RESULTS, TERMINAL_JOB_STATUSES, TrialResult

PASS_THRESHOLD = PASS_REWARD


class _CellCounts:
    """A ``TaskCell`` being counted (plain dicts: a page of tasks counts thousands of groups)."""

    __slots__ = ("errors", "results", "reward_sum")

    def __init__(self) -> None:
        self.results: dict[str, int] = {}
        self.reward_sum = 0.0
        self.errors: dict[str, int] = {}

    def add(self, result: str | None, outcome: str | None, trials: int, score_sum: float) -> None:
        key = result or UNFINISHED
        self.results[key] = self.results.get(key, 0) + trials
        if result in SCORED_RESULTS:
            self.reward_sum += score_sum
        elif result in ERROR_RESULTS:
            kind = "cancelled" if result == TrialResult.CANCELLED else outcome or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + trials

    def cell(self) -> TaskCell:
        return TaskCell(self.results, self.reward_sum, self.errors)


def _score(reward: float | None) -> float:
    return 0.0 if reward is None or math.isnan(reward) else reward


def scores_of_trials(trials: Iterable[TrialModel]) -> dict[str, Any]:
    """``oddish.pass_rates.summarize`` of the trials, each task x agent/model one problem."""
    cells: dict[tuple[str, str, str | None], _CellCounts] = {}
    for t in trials:
        result = trial_result(t.status, t.outcome, t.reward)
        cell = cells.setdefault((t.task_id, t.agent, t.model), _CellCounts())
        cell.add(result, t.outcome, 1, _score(t.reward))
    return summarize(c.cell() for c in cells.values())


def scores_of_groups(
    groups: Iterable[TaskStatusCount], *, with_pass_at_k: bool = True
) -> dict[str, Any]:
    """``scores_of_trials`` of the trials the aggregated groups stand for."""
    cells: dict[tuple[str, str, str | None], _CellCounts] = {}
    for g in groups:
        cell = cells.setdefault((g.task_id, g.agent, g.model), _CellCounts())
        cell.add(g.result, g.outcome, g.trials, g.score_sum)
    return summarize((c.cell() for c in cells.values()), with_pass_at_k=with_pass_at_k)


def group_stats(trials: list[TrialModel]) -> dict[str, Any]:
    # A trial without a reward (it failed before scoring) counts as 0: it did not pass.
    rewards = [t.reward if t.reward is not None else 0.0 for t in trials]
    passed = sum(1 for r in rewards if r >= PASS_THRESHOLD)
    return {
        "trials": len(trials),
        "passed": passed,
        "pass_rate": passed / len(trials) if trials else None,
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "status_counts": dict(Counter(t.status for t in trials)),
        "outcome_counts": dict(Counter(t.outcome or "unknown" for t in trials)),
        "scores": scores_of_trials(trials),
    }


def _agent_model(agent: str, model: str | None) -> str:
    return f"{agent}/{model or '-'}"


def group_by_agent_model(trials: Iterable[TrialModel]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[TrialModel]] = {}
    for trial in trials:
        groups.setdefault(_agent_model(trial.agent, trial.model), []).append(trial)
    return {
        key: {"agent": group[0].agent, "model": group[0].model, **group_stats(group)}
        for key, group in sorted(groups.items())
    }


def stats_of_groups(
    groups: Iterable[AgentModelGroup], shapes: Iterable[TaskShape]
) -> dict[str, Any]:
    """``group_stats`` of the trials the aggregated groups stand for, the tasks they ran
    counted by shape (``oddish.db.stats.experiment_task_shapes``) for the scores' pass@k."""
    n = passed = 0
    reward_sum = 0.0
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    # The experiment's cells summed: per result, not per task (the shapes have the tasks).
    cells = _CellCounts()
    for g in groups:
        n += g.trials
        passed += g.passed
        reward_sum += g.reward_sum
        statuses[g.status] += g.trials
        outcomes[g.outcome or "unknown"] += g.trials
        cells.add(g.result, g.outcome, g.trials, g.score_sum)
    by_shape: Counter[tuple[int, int]] = Counter()
    for shape in shapes:
        by_shape[shape.scored, shape.passed] += shape.tasks
    totals = CellTotals(
        cells.results, cells.reward_sum, cells.errors, sum(by_shape.values()), by_shape
    )
    return {
        "trials": n,
        "passed": passed,
        "pass_rate": passed / n if n else None,
        "mean_reward": reward_sum / n if n else None,
        "status_counts": dict(statuses),
        "outcome_counts": dict(outcomes),
        "scores": summarize_totals(totals),
    }


def groups_by_agent_model(
    groups: Iterable[AgentModelGroup], shapes: Iterable[TaskShape]
) -> dict[str, dict[str, Any]]:
    """``group_by_agent_model`` of the trials the aggregated groups stand for."""
    by_key: dict[str, list[AgentModelGroup]] = {}
    for g in groups:
        by_key.setdefault(_agent_model(g.agent, g.model), []).append(g)
    shapes_by_key: dict[str, list[TaskShape]] = {}
    for shape in shapes:
        shapes_by_key.setdefault(_agent_model(shape.agent, shape.model), []).append(shape)
    return {
        key: {
            "agent": part[0].agent,
            "model": part[0].model,
            **stats_of_groups(part, shapes_by_key.get(key, [])),
        }
        for key, part in sorted(by_key.items())
    }


def task_trial_summary(counts: Iterable[TaskStatusCount]) -> dict[str, Any]:
    """A task's trial figures for lists, from its per-status counts: the mean reward is of
    finished trials (a missing reward as 0), as ``group_stats`` of them gives it; ``scores`` as
    ``oddish.pass_rates`` gives them (each agent/model of the task one problem)."""
    counts = list(counts)
    total = finished = 0
    finished_reward = 0.0
    by_status: dict[str, int] = {}
    for c in counts:
        total += c.trials
        by_status[c.status] = by_status.get(c.status, 0) + c.trials
        if c.status in TERMINAL_JOB_STATUSES:
            finished += c.trials
            finished_reward += c.reward_sum
    return {
        "trials_count": total,
        "trials_finished": finished,
        "trial_status_counts": by_status,
        "mean_reward": finished_reward / finished if finished else None,
        "scores": scores_of_groups(counts, with_pass_at_k=False),
    }


def usage_of_groups(groups: Iterable[AgentModelGroup]) -> dict[str, Any]:
    """What the agents of the groups' trials used: tokens, cost (None when none reported one)
    and the mean wall time of the trials that ran to an end."""
    usage = sum((g.usage for g in groups), AgentUsage())
    return {
        "n_input_tokens": usage.n_input_tokens,
        "n_cache_tokens": usage.n_cache_tokens,
        "n_output_tokens": usage.n_output_tokens,
        "cost_usd": usage.cost_usd,
        "mean_duration_sec": (
            usage.duration_sec / usage.timed_trials if usage.timed_trials else None
        ),
    }


def usage_by_agent_model(groups: Iterable[AgentModelGroup]) -> dict[str, dict[str, Any]]:
    by_key: dict[str, list[AgentModelGroup]] = {}
    for g in groups:
        by_key.setdefault(_agent_model(g.agent, g.model), []).append(g)
    return {key: usage_of_groups(part) for key, part in sorted(by_key.items())}


def task_matrix(
    counts: Iterable[TaskStatusCount],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task, per agent/model: trials, finished, scored (got a reward), passed, errored
    (an error or cancelled), and pass@1 of the scored ones (None while none is), from the
    tasks' counts by status (``oddish.db.stats.task_status_counts``)."""
    cells: dict[str, dict[str, _CellCounts]] = {}
    for c in counts:
        by_key = cells.setdefault(c.task_id, {})
        by_key.setdefault(_agent_model(c.agent, c.model), _CellCounts()).add(
            c.result, c.outcome, c.trials, c.score_sum
        )
    return {
        task_id: {key: _matrix_cell(cell.cell()) for key, cell in sorted(by_key.items())}
        for task_id, by_key in cells.items()
    }


def _matrix_cell(cell: TaskCell) -> dict[str, Any]:
    trials = sum(cell.results.values())
    return {
        "trials": trials,
        "finished": trials - cell.results.get(UNFINISHED, 0),
        "scored": cell.scored,
        "passed": cell.passed,
        "errored": sum(cell.errors.values()),
        "pass_rate": cell.passed / cell.scored if cell.scored else None,
    }
