"""Per-task verdict from the trials' results. Rule-based; an LLM judge can replace ``decide_verdict``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from temporalio import activity

from oddish.contracts import VerdictInput
from oddish.db import records
from oddish.db.connection import get_session
from oddish.db.models import TrialModel
from oddish.statuses import OutcomeKind

DECIDER = "rules-v1"
PASS_THRESHOLD = 1.0


def _group_stats(trials: list[TrialModel]) -> dict[str, Any]:
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


def decide(trials: list[TrialModel]) -> tuple[str, dict[str, Any]]:
    groups: dict[str, list[TrialModel]] = {}
    for trial in trials:
        groups.setdefault(f"{trial.agent}/{trial.model or '-'}", []).append(trial)
    overall = _group_stats(trials)
    details = {
        "overall": overall,
        "by_agent_model": {key: _group_stats(group) for key, group in sorted(groups.items())},
    }
    infra = overall["outcome_counts"].get(OutcomeKind.INFRASTRUCTURE_ERROR, 0)
    summary = (
        f"{overall['passed']}/{overall['trials']} trials passed "
        f"(mean reward {overall['mean_reward']:.3f})"
        if trials else "no trials"
    )
    if infra:
        summary += f"; {infra} failed on infrastructure"
    return summary, details


@activity.defn(name="decide_verdict")
async def decide_verdict(inp: VerdictInput) -> str:
    async with get_session() as session:
        task = await records.get_task(session, inp.task_id, with_trials=True)
        summary, details = decide(list(task.trials))
        await records.save_verdict(
            session, task_id=task.id, summary=summary, details=details, decider=DECIDER
        )
        await session.commit()
    return summary
