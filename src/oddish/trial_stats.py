"""Counts, pass rate and mean reward of a set of trials, overall and per agent/model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from oddish.db.models import TrialModel

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


def group_by_agent_model(trials: Iterable[TrialModel]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[TrialModel]] = {}
    for trial in trials:
        groups.setdefault(f"{trial.agent}/{trial.model or '-'}", []).append(trial)
    return {key: group_stats(group) for key, group in sorted(groups.items())}
