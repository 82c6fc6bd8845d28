"""Counts, pass rate and mean reward of a set of trials, overall and per agent/model.

Two sources give the same figures: trial rows (a task's verdict, a few hundred trials), and the
groups Postgres aggregates (``oddish.db.stats``) for views of whole experiments, where loading
every row would cost seconds and hundreds of MB."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from oddish.db.models import TrialModel
from oddish.db.stats import TaskStatusCount, TrialGroup
from oddish.statuses import TERMINAL_JOB_STATUSES

PASS_THRESHOLD = 1.0


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
    }


def _agent_model(agent: str, model: str | None) -> str:
    return f"{agent}/{model or '-'}"


def group_by_agent_model(trials: Iterable[TrialModel]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[TrialModel]] = {}
    for trial in trials:
        groups.setdefault(_agent_model(trial.agent, trial.model), []).append(trial)
    return {key: group_stats(group) for key, group in sorted(groups.items())}


def stats_of_groups(groups: Iterable[TrialGroup]) -> dict[str, Any]:
    """``group_stats`` of the trials the aggregated groups stand for."""
    n = passed = 0
    reward_sum = 0.0
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for g in groups:
        n += g.trials
        passed += g.passed
        reward_sum += g.reward_sum
        statuses[g.status] += g.trials
        outcomes[g.outcome or "unknown"] += g.trials
    return {
        "trials": n,
        "passed": passed,
        "pass_rate": passed / n if n else None,
        "mean_reward": reward_sum / n if n else None,
        "status_counts": dict(statuses),
        "outcome_counts": dict(outcomes),
    }


def groups_by_agent_model(groups: Iterable[TrialGroup]) -> dict[str, dict[str, Any]]:
    """``group_by_agent_model`` of the trials the aggregated groups stand for."""
    by_key: dict[str, list[TrialGroup]] = {}
    for g in groups:
        by_key.setdefault(_agent_model(g.agent, g.model), []).append(g)
    return {key: stats_of_groups(part) for key, part in sorted(by_key.items())}


def task_trial_summary(counts: Iterable[TaskStatusCount]) -> dict[str, Any]:
    """A task's trial figures for lists, from its per-status counts: the mean reward is of
    finished trials (a missing reward as 0), as ``group_stats`` of them gives it."""
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
    }
