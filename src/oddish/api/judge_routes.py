"""The judge-again routes (the original Oddish's): the analyses and verdicts of finished tasks
redone, with the task's judge model or another, without running any trial again."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from oddish import queue, task_judge
from oddish.api.app_state import temporal
from oddish.request_bodies import JudgeAgainRequest

JUDGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a body that is not JSON"},
    401: {"description": "missing or wrong key (when ODDISH_API_KEY is set)"},
    404: {"description": "no such trial, task or experiment"},
    409: {"description": "the task still runs, or the judge is at it already"},
    413: {"description": "a body over ODDISH_API_MAX_BODY_BYTES"},
    422: {"description": "no judge model configured and none given"},
    503: {"description": "Temporal cannot be reached"},
}


class JudgeAgainStarted(BaseModel):
    task_id: str
    workflow_id: str
    trial_ids: list[str]
    verdict: bool
    analysis_model: str
    verdict_model: str
    started_at: datetime


class ExperimentJudgeAgain(BaseModel):
    experiment_id: str
    # Per task: what started (the fields of JudgeAgainStarted), or {"task_id", "skipped"}.
    tasks: list[dict[str, Any]]


def _model(body: JudgeAgainRequest | None) -> str | None:
    return body.model if body is not None else None


def build_judge_router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/trials/{trial_id}/analysis/retry",
        summary="Judge a finished trial again (its analysis only)",
        status_code=202,
        responses=JUDGE_RESPONSES,
    )
    async def judge_trial_again(
        trial_id: str, request: Request, body: JudgeAgainRequest | None = None
    ) -> JudgeAgainStarted:
        trial = await queue.get_trial(trial_id)
        started = await task_judge.judge_again(
            trial["task_id"],
            client=temporal(request),
            trial_ids=[trial_id],
            verdict=False,
            model=_model(body),
        )
        return JudgeAgainStarted(**started)

    @router.post(
        "/tasks/{task_id}/analysis/retry",
        summary="Judge a finished task again: every trial's analysis, then its verdict",
        status_code=202,
        responses=JUDGE_RESPONSES,
    )
    async def judge_task_again(
        task_id: str, request: Request, body: JudgeAgainRequest | None = None
    ) -> JudgeAgainStarted:
        started = await task_judge.judge_again(
            task_id, client=temporal(request), model=_model(body)
        )
        return JudgeAgainStarted(**started)

    @router.post(
        "/tasks/{task_id}/verdict/retry",
        summary="Decide a finished task's verdict again from its analyses",
        status_code=202,
        responses=JUDGE_RESPONSES,
    )
    async def judge_verdict_again(
        task_id: str, request: Request, body: JudgeAgainRequest | None = None
    ) -> JudgeAgainStarted:
        started = await task_judge.judge_again(
            task_id, client=temporal(request), trial_ids=[], verdict=True, model=_model(body)
        )
        return JudgeAgainStarted(**started)

    @router.post(
        "/experiments/{experiment_id}/analysis/retry",
        summary="Judge every finished task of an experiment again",
        status_code=202,
        responses=JUDGE_RESPONSES,
    )
    async def judge_experiment_again(
        experiment_id: str, request: Request, body: JudgeAgainRequest | None = None
    ) -> ExperimentJudgeAgain:
        tasks = await task_judge.judge_experiment_again(
            experiment_id, client=temporal(request), model=_model(body)
        )
        return ExperimentJudgeAgain(experiment_id=experiment_id, tasks=tasks)

    return router
