"""Per-trial analysis. Rule-based for now: an LLM classifier can replace ``analyze_trial`` keeping
its input and name."""

from __future__ import annotations

from temporalio import activity

from oddish.activities.heartbeat import heartbeating
from oddish.contracts import AnalyzeTrialInput
from oddish.db import records
from oddish.db.connection import get_session, until_database_answers
from oddish.db.models import TrialModel
from oddish.statuses import OutcomeKind

ANALYZER = "rules-v1"

_SUMMARIES = {
    OutcomeKind.SUCCESS: "The agent solved the task.",
    OutcomeKind.PARTIAL: "The agent earned partial credit.",
    OutcomeKind.TASK_FAILURE: "The agent finished but the tests failed.",
    OutcomeKind.AGENT_FAILURE: "The agent itself failed.",
    OutcomeKind.AGENT_TIMEOUT: "The agent ran out of time.",
    OutcomeKind.VERIFIER_ERROR: "The verifier produced no usable reward.",
    OutcomeKind.INFRASTRUCTURE_ERROR: "The trial could not run: an infrastructure failure.",
    OutcomeKind.CANCELLED: "The trial was cancelled.",
}


def analyze(trial: TrialModel) -> tuple[str, str, dict[str, object]]:
    kind = OutcomeKind(trial.outcome) if trial.outcome else OutcomeKind.INFRASTRUCTURE_ERROR
    summary = _SUMMARIES[kind]
    if trial.reward is not None:
        summary += f" Reward {trial.reward:g}."
    if trial.error_type:
        summary += f" {trial.error_type}: {(trial.error_message or '').strip()[:500]}"
    details: dict[str, object] = {
        "outcome": kind.value,
        "reward": trial.reward,
        "rewards": trial.rewards,
        "error_type": trial.error_type,
        "attempts": len(trial.attempts),
    }
    return kind.value, summary, details


@activity.defn(name="analyze_trial")
async def analyze_trial(inp: AnalyzeTrialInput) -> str:
    # A Postgres restart must not fail the task's analysis: wait for it, heartbeating.
    async with heartbeating():
        return await until_database_answers(
            lambda: _analyze_and_save(inp.trial_id), what=f"analysis of trial {inp.trial_id}"
        )


async def _analyze_and_save(trial_id: str) -> str:
    async with get_session() as session:
        trial = await records.get_trial(session, trial_id)
        classification, summary, details = analyze(trial)
        await records.save_analysis(
            session,
            trial_id=trial.id,
            classification=classification,
            summary=summary,
            details=details,
            analyzer=ANALYZER,
        )
        await session.commit()
    return classification
