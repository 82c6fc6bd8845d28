"""Per-task verdict from the trials' results. Rule-based; an LLM judge can replace
``decide_verdict``."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from oddish.activities.heartbeat import heartbeating
from oddish.contracts import VerdictInput
from oddish.db import records
from oddish.db.connection import get_session, until_database_answers
from oddish.db.models import TrialModel
from oddish.statuses import OutcomeKind
from oddish.trial_stats import group_by_agent_model, group_stats

DECIDER = "rules-v1"


def decide(trials: list[TrialModel]) -> tuple[str, dict[str, Any]]:
    overall = group_stats(trials)
    details = {"overall": overall, "by_agent_model": group_by_agent_model(trials)}
    infra = overall["outcome_counts"].get(OutcomeKind.INFRASTRUCTURE_ERROR, 0)
    summary = (
        f"{overall['passed']}/{overall['trials']} trials passed "
        f"(mean reward {overall['mean_reward']:.3f})"
        if trials
        else "no trials"
    )
    if infra:
        summary += f"; {infra} failed on infrastructure"
    return summary, details


async def _decide_and_save(task_id: str) -> str:
    async with get_session() as session:
        task = await records.get_task(session, task_id, with_trials=True)
        summary, details = decide(list(task.trials))
        await records.save_verdict(
            session, task_id=task.id, summary=summary, details=details, decider=DECIDER
        )
        await session.commit()
    return summary


@activity.defn(name="decide_verdict")
async def decide_verdict(inp: VerdictInput) -> str:
    # A Postgres restart must not fail a task whose trials all ran: wait for it, heartbeating.
    async with heartbeating():
        return await until_database_answers(
            lambda: _decide_and_save(inp.task_id), what=f"verdict of task {inp.task_id}"
        )
