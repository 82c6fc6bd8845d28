"""Per-task verdict: the counts (pass rate, per agent/model) always, and the judge's verdict
(``oddish.judge``) when the task asked for it, from the task and its trials' analyses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import activity

from oddish.activities.analysis import ANALYZER, analyze
from oddish.activities.heartbeat import heartbeating
from oddish.config import get_settings
from oddish.contracts import VerdictInput
from oddish.db import records
from oddish.db.connection import get_session, until_database_answers
from oddish.db.models import TrialModel
from oddish.judge.calls import Judged, SlotOwner, judge_task
from oddish.statuses import JUDGEABLE_TRIAL_STATUSES, OutcomeKind
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


def judged_analyses(trials: list[TrialModel]) -> list[dict[str, Any]]:
    """Each trial's analysis as the verdict's judge reads it: the judge's classification where
    there is one, else the rule-based outcome."""
    shown = []
    for trial in sorted(trials, key=lambda t: t.index):
        judgement = (trial.analysis.judgement if trial.analysis else None) or {}
        shown.append(
            {
                "index": trial.index,
                "agent": trial.agent,
                "model": trial.model,
                "reward": trial.reward,
                "classification": judgement.get("classification") or trial.outcome,
                "subtype": judgement.get("subtype") or "-",
                "root_cause": judgement.get("root_cause") or trial.error_message or "",
            }
        )
    return shown


@dataclass
class _Reading:
    # Rule-based analyses of finished trials that have none (a task without the judge):
    # (trial id, classification, summary, details).
    rule_analyses: list[tuple[str, str, str, dict[str, Any]]]
    summary: str
    details: dict[str, Any]
    task: dict[str, Any]
    analyses: list[dict[str, Any]]
    model: str | None
    task_location: str
    priority: int


async def _read(inp: VerdictInput) -> _Reading:
    async with get_session() as session:
        task = await records.get_task(session, inp.task_id, with_trials=True, results_only=True)
        trials = list(task.trials)
        summary, details = decide(trials)
        return _Reading(
            rule_analyses=[
                (trial.id, *analyze(trial))
                for trial in trials
                if trial.analysis is None and trial.status in JUDGEABLE_TRIAL_STATUSES
            ],
            summary=summary,
            details=details,
            task={"id": task.id, "name": task.name},
            analyses=judged_analyses(trials),
            model=inp.model or (task.verdict_model if task.run_analysis else None),
            task_location=task.task_path,
            priority=task.priority,
        )


async def _save(task_id: str, reading: _Reading, judged: Judged | None) -> str:
    judge = None if judged is None else judged.fields()
    async with get_session() as session:
        await records.save_rule_analyses(session, reading.rule_analyses, ANALYZER)
        await records.save_verdict(
            session,
            task_id=task_id,
            summary=reading.summary,
            details=reading.details,
            decider=DECIDER if judged is None else f"{DECIDER}+{judged.model}",
            judge=judge,
        )
        await session.commit()
    return reading.summary


@activity.defn(name="decide_verdict")
async def decide_verdict(inp: VerdictInput) -> str:
    # A Postgres restart must not fail a task whose trials all ran: wait for it, heartbeating.
    async with heartbeating():
        what = f"verdict of task {inp.task_id}"
        reading = await until_database_answers(lambda: _read(inp), what=what)
        judged = None
        if reading.model:
            judged = await judge_task(
                get_settings(),
                reading.model,
                reading.task,
                reading.details,
                reading.analyses,
                task_location=reading.task_location,
                owner=SlotOwner(
                    f"verdict:{inp.task_id}", activity.info().workflow_id or "", reading.priority
                ),
            )
        return await until_database_answers(lambda: _save(inp.task_id, reading, judged), what=what)
