"""Routes of the original Oddish that ours names otherwise or lacked: the task browser, a
task's versions, the dashboard's counts, cancelling many tasks at once, deleting one trial."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import Field

from oddish import task_catalog, task_control
from oddish.api.app_state import temporal
from oddish.api.views import ExperimentListed, IsoTime, QueueStats, TaskSummary, View
from oddish.db.records import RecordNotFound
from oddish.request_bodies import BatchCancel


class Closed(View):
    """A view (see oddish.api.views: unknown fields pass, the tests refuse them)."""


class TaskVersionView(Closed):
    id: str = Field(description="the first task that ran this version")
    task_id: str = Field(description="the task asked about")
    version: int = Field(ge=1, description="1 for the oldest archive of the task's name")
    task_path: str = Field(description="where the version's archive is stored")
    content_hash: str | None = Field(description="sha256 of the archive (None: before hashing)")
    message: None = Field(description="always null: ours records no version messages")
    created_by_user_id: str | None
    created_at: IsoTime
    tasks_count: int = Field(description="tasks that ran this version")


class BrowseExperiment(Closed):
    id: str
    name: str


class BrowseItem(Closed):
    id: str = Field(description="the latest task of this name")
    name: str
    current_version: int
    current_version_id: str
    version_count: int
    tasks_count: int
    total_trials: int
    completed_trials: int
    failed_trials: int
    reward_success: int = Field(description="trials with reward >= 1")
    reward_total: int = Field(description="trials with a reward")
    last_run_at: IsoTime | None
    experiments: list[BrowseExperiment]


class BrowsePage(Closed):
    items: list[BrowseItem]
    limit: int
    offset: int
    has_more: bool


class Dashboard(Closed):
    queues: dict[str, QueueStats] = Field(
        description="per queue key: waiting, running, limit",
        examples=[{"default": {"waiting": 3, "running": 8, "limit": 8}}],
    )
    pipeline: dict[str, dict[str, int]] = Field(
        description="tasks and trials per status",
        examples=[{"tasks": {"running": 2}, "trials": {"queued": 3, "running": 8}}],
    )
    tasks: list[TaskSummary] = Field(description="a page of tasks as GET /tasks lists them")
    tasks_limit: int
    tasks_offset: int
    has_more: bool
    experiments: list[ExperimentListed] = Field(description="as GET /experiments lists them")
    experiments_limit: int
    experiments_offset: int
    experiments_has_more: bool


class CancelledTask(Closed):
    id: str
    status: str = Field(description="the task's status now: cancelling, or as it ended")


class BatchCancelled(Closed):
    status: str = Field(description="always 'cancelled'", examples=["cancelled"])
    task_ids: list[str]
    not_found_task_ids: list[str]
    tasks_found: int
    tasks_cancelled: int = Field(description="tasks asked to stop (unfinished ones)")
    tasks: list[CancelledTask]


class TrialDeleted(Closed):
    id: str
    task_id: str
    deleted: bool


BUSY: dict[int | str, dict[str, Any]] = {
    409: {"description": "the trial or its task is still at work: cancel or wait first"}
}


def build_original_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        "/tasks/browse",
        summary="Tasks by name: the latest of each, its versions and trial counts",
        response_model=BrowsePage,
        response_model_exclude_unset=True,
    )
    async def browse_tasks(
        limit: int = Query(default=25, ge=1, le=100),
        offset: int = Query(default=0, ge=0, le=1_000_000_000),
        query: str | None = Query(default=None, max_length=255, description="part of a name"),
    ) -> dict[str, Any]:
        return await task_catalog.browse_tasks(limit=limit, offset=offset, query=query)

    @router.get(
        "/tasks/{task_id}/versions",
        summary="The versions of a task: the distinct archives of its name, newest first",
        response_model=list[TaskVersionView],
        response_model_exclude_unset=True,
    )
    async def task_versions(task_id: str) -> list[dict[str, Any]]:
        return await task_catalog.task_versions(task_id)

    @router.get(
        "/tasks/{task_id}/versions/{version}",
        summary="One version of a task",
        response_model=TaskVersionView,
        response_model_exclude_unset=True,
    )
    async def task_version(task_id: str, version: int = Path(ge=1, le=1_000_000)) -> Any:
        return await task_catalog.task_version(task_id, version)

    @router.get(
        "/dashboard",
        summary="Per queue its slots, tasks and trials per status, recent tasks and experiments",
        response_model=Dashboard,
        response_model_exclude_unset=True,
    )
    async def dashboard(
        tasks_limit: int = Query(default=200, ge=1, le=500),
        tasks_offset: int = Query(default=0, ge=0, le=1_000_000_000),
        experiments_limit: int = Query(default=25, ge=1, le=100),
        experiments_offset: int = Query(default=0, ge=0, le=1_000_000_000),
    ) -> dict[str, Any]:
        return await task_catalog.dashboard(
            tasks_limit=tasks_limit,
            tasks_offset=tasks_offset,
            experiments_limit=experiments_limit,
            experiments_offset=experiments_offset,
        )

    @router.post(
        "/tasks/cancel",
        summary="Stop many tasks at once (the original's batch cancel)",
        response_model=BatchCancelled,
        response_model_exclude_unset=True,
    )
    async def cancel_tasks(body: BatchCancel, request: Request) -> dict[str, Any]:
        found: list[dict[str, str]] = []
        missing: list[str] = []
        for task_id in dict.fromkeys(body.task_ids):
            try:
                status = await task_control.cancel_task(task_id, client=temporal(request))
            except RecordNotFound:
                missing.append(task_id)
                continue
            found.append({"id": task_id, "status": status})
        if not found:
            raise HTTPException(404, detail=f"no such tasks: {', '.join(missing)}")
        return {
            "status": "cancelled",
            "task_ids": [t["id"] for t in found],
            "not_found_task_ids": missing,
            "tasks_found": len(found),
            "tasks_cancelled": sum(t["status"] in ("cancelling", "cancelled") for t in found),
            "tasks": found,
        }

    @router.delete(
        "/trials/{trial_id}",
        summary="Delete one finished trial of a finished task, with its stored output",
        response_model=TrialDeleted,
        response_model_exclude_unset=True,
        responses=BUSY,
    )
    async def delete_trial(trial_id: str) -> dict[str, Any]:
        try:
            task_id = await task_catalog.delete_trial(trial_id)
        except task_catalog.TrialBusy as exc:
            raise HTTPException(409, detail=str(exc)) from exc
        return {"id": trial_id, "task_id": task_id, "deleted": True}

    return router
