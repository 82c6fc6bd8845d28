"""The judge again on finished tasks: their trials' analyses and verdicts redone (another model,
say) by a ``JudgeAgainWorkflow``, without running any trial again."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from oddish.config import get_settings
from oddish.contracts import JudgeAgainInput
from oddish.db import records
from oddish.db.connection import get_session
from oddish.judge.models import JudgeModels, judge_models
from oddish.statuses import JUDGEABLE_TRIAL_STATUSES, TERMINAL_TASK_STATUSES
from oddish.temporal_gateway import start_judge_again


class JudgeRefused(ValueError):
    """The judge cannot start on that now: the task still runs, or the judge is at it already."""


def _models(task_analysis: str | None, task_verdict: str | None, model: str | None) -> JudgeModels:
    """``model`` for both when given; else the task's own, else the settings'."""
    if model or not task_analysis:
        return judge_models(get_settings(), model)
    return JudgeModels(task_analysis, task_verdict or task_analysis)


async def judge_again(
    task_id: str,
    *,
    client: Client,
    trial_ids: list[str] | None = None,
    verdict: bool = True,
    model: str | None = None,
) -> dict[str, Any]:
    """Start the judge again on a finished task: the analyses of ``trial_ids`` (default: every
    trial with a result), then its verdict when ``verdict``. RecordNotFound for unknown ids,
    JudgeRefused while the task runs or is being judged, JudgeNotConfigured without a model."""
    async with get_session() as session:
        task = await records.get_task(session, task_id, with_trials=True)
    if task.status not in TERMINAL_TASK_STATUSES:
        raise JudgeRefused(f"task {task_id} is {task.status}; judge it again once it has finished")
    judged = [t for t in task.trials if t.status in JUDGEABLE_TRIAL_STATUSES]
    if trial_ids is None:
        chosen = [t.id for t in judged]
    else:
        known = {t.id: t for t in task.trials}
        unknown = [t for t in trial_ids if t not in known]
        if unknown:
            raise records.RecordNotFound(f"no trial {unknown[0]!r} in task {task_id!r}")
        chosen = list(dict.fromkeys(trial_ids))
        unjudged = [t for t in chosen if known[t].status not in JUDGEABLE_TRIAL_STATUSES]
        if unjudged:
            raise JudgeRefused(
                "only trials with a result can be judged; "
                + ", ".join(f"{t} is {known[t].status}" for t in unjudged)
            )
    models = _models(task.analysis_model, task.verdict_model, model)
    inp = JudgeAgainInput(
        task_id=task_id,
        trial_ids=chosen,
        verdict=verdict,
        analysis_model=models.analysis,
        verdict_model=models.verdict,
        analysis_heartbeat_timeout_sec=get_settings().analysis_heartbeat_timeout_sec,
    )
    started_at = records.now()
    try:
        workflow_id = await start_judge_again(client, inp)
    except WorkflowAlreadyStartedError:
        raise JudgeRefused(
            f"the judge is already at task {task_id}; try again once it is done"
        ) from None
    return {
        "task_id": task_id,
        "workflow_id": workflow_id,
        "trial_ids": chosen,
        "verdict": verdict,
        "analysis_model": models.analysis,
        "verdict_model": models.verdict,
        # Analyses and verdicts recorded from then on are this judging's.
        "started_at": started_at.isoformat(),
    }


async def judge_experiment_again(
    experiment_id: str, *, client: Client, model: str | None = None
) -> list[dict[str, Any]]:
    """The judge again on every finished task of the experiment (by id or name); a task still
    running or being judged is skipped and said so."""
    async with get_session() as session:
        found = await records.experiment_id_for(session, experiment_id) or experiment_id
        task_ids = await records.experiment_task_ids(session, found)
    started = []
    for task_id in task_ids:
        try:
            started.append(await judge_again(task_id, client=client, model=model))
        except JudgeRefused as exc:
            started.append({"task_id": task_id, "skipped": str(exc)})
    return started
