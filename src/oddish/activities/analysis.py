"""Per-trial analysis: the rule-based classification (from the recorded outcome, free) always,
and the judge's (``oddish.judge``) when the task asked for it, side by side in one row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import activity

from oddish.activities.heartbeat import heartbeating
from oddish.config import get_settings
from oddish.contracts import AnalyzeTrialInput
from oddish.db import records
from oddish.db.connection import get_session, until_database_answers
from oddish.db.models import TrialModel
from oddish.judge.calls import Judged, SlotOwner, judge_trial
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


@dataclass
class _Reading:
    """What the analysis needs of the records, read before any slow call."""

    classification: str
    summary: str
    details: dict[str, object]
    facts: dict[str, Any]
    model: str | None
    task_location: str
    output_location: str | None
    priority: int


async def _read(inp: AnalyzeTrialInput) -> _Reading:
    async with get_session() as session:
        trial = await records.get_trial(session, inp.trial_id)
        task = await records.get_task(session, trial.task_id)
        classification, summary, details = analyze(trial)
        return _Reading(
            classification=classification,
            summary=summary,
            details=details,
            facts={
                "agent": trial.agent,
                "model": trial.model,
                "reward": trial.reward,
                "rewards": trial.rewards,
                "outcome": trial.outcome,
                "error_type": trial.error_type,
                "error_message": trial.error_message,
                "attempts": len(trial.attempts),
            },
            model=inp.model or (task.analysis_model if task.run_analysis else None),
            task_location=task.task_path,
            output_location=trial.harbor_trial_dir,
            priority=task.priority,
        )


async def _save(trial_id: str, reading: _Reading, judged: Judged | None) -> None:
    judge = None if judged is None else judged.fields()
    async with get_session() as session:
        await records.save_analysis(
            session,
            trial_id=trial_id,
            classification=reading.classification,
            summary=reading.summary,
            details=reading.details,
            analyzer=ANALYZER if judged is None else f"{ANALYZER}+{judged.model}",
            judge=judge,
        )
        await session.commit()


@activity.defn(name="analyze_trial")
async def analyze_trial(inp: AnalyzeTrialInput) -> str:
    # A Postgres restart must not fail the task's analysis: wait for it, heartbeating. The
    # judge's provider being busy is waited out inside the call.
    async with heartbeating():
        what = f"analysis of trial {inp.trial_id}"
        reading = await until_database_answers(lambda: _read(inp), what=what)
        judged = None
        if reading.model:
            judged = await judge_trial(
                get_settings(),
                reading.model,
                reading.facts,
                task_location=reading.task_location,
                output_location=reading.output_location,
                owner=SlotOwner(
                    f"analysis:{inp.trial_id}", activity.info().workflow_id or "", reading.priority
                ),
            )
        await until_database_answers(lambda: _save(inp.trial_id, reading, judged), what=what)
        if judged is not None and judged.judgement.get("classification"):
            return str(judged.judgement["classification"])
        return reading.classification
