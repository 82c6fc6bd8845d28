"""The FastAPI application: HTTP only; every rule lives in ``oddish.queue`` and below."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from oddish import queue
from oddish.api.auth import require_api_key
from oddish.api.trial_files import read_logs, read_result
from oddish.db import migrations
from oddish.db.connection import dispose_engine, get_session
from oddish.db.records import RecordNotFound
from oddish.statuses import TaskStatus
from oddish.temporal_client import connect

log = logging.getLogger(__name__)


class LimitUpdate(BaseModel):
    limit: int = Field(ge=1, le=10_000, description="trials of this queue key that may run at once")


def build_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_api_key)])

    @router.get("/tasks", summary="List tasks, newest first, one page at a time")
    async def list_tasks(
        status: TaskStatus | None = None,
        experiment: str | None = Query(default=None, description="experiment id"),
        user: str | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        return await queue.list_tasks(status=status, experiment_id=experiment, user=user,
                                      limit=limit, offset=offset)

    @router.get("/tasks/{task_id}", summary="A task with its trials and verdict")
    async def get_task(task_id: str) -> dict[str, Any]:
        return await queue.get_task_with_trials(task_id)

    @router.get("/tasks/{task_id}/trials/{index}", summary="A trial of a task by its index")
    async def get_trial_by_index(task_id: str, index: int) -> dict[str, Any]:
        return await queue.get_trial_by_index(task_id, index)

    @router.get("/trials/{trial_id}", summary="A trial with its attempts and analysis")
    async def get_trial(trial_id: str) -> dict[str, Any]:
        return await queue.get_trial(trial_id)

    @router.get("/trials/{trial_id}/result", summary="Harbor's result.json of the latest attempt")
    async def get_trial_result(trial_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(read_result, await queue.get_trial(trial_id))

    @router.get("/trials/{trial_id}/logs", summary="Text files of the latest attempt's output")
    async def get_trial_logs(trial_id: str) -> dict[str, Any]:
        trial = await queue.get_trial(trial_id)
        return {"trial_id": trial_id, "files": await asyncio.to_thread(read_logs, trial)}

    @router.get("/experiments", summary="List experiments")
    async def list_experiments() -> list[dict[str, Any]]:
        return await queue.list_experiments()

    @router.get("/experiments/{experiment_id}",
                summary="An experiment: per agent/model trials, pass rate, mean reward, statuses")
    async def get_experiment(experiment_id: str) -> dict[str, Any]:
        return await queue.get_experiment(experiment_id)

    @router.get("/limits", summary="Per queue key: the limit, and trials waiting and running")
    async def get_limits() -> dict[str, Any]:
        return {"default": await queue.get_default_limit(), "queues": await queue.get_queue_stats()}

    @router.put("/limits/{queue_key:path}", summary="Set a queue key's limit; takes effect at once")
    async def put_limit(queue_key: str, update: LimitUpdate) -> dict[str, Any]:
        await queue.set_queue_limit(queue_key, update.limit)
        return {"queue_key": queue_key, "limit": update.limit}

    return router


def create_app(*, run_workers: bool = False, n_concurrent: dict[str, int] | None = None) -> FastAPI:
    """The app; with ``run_workers`` it also runs a worker (Temporal worker + slot dispatcher)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrations.upgrade()
        app.state.temporal = await connect()
        stop = asyncio.Event()
        worker: asyncio.Task[None] | None = None
        if run_workers:
            from oddish.worker.runner import run_worker

            worker = asyncio.create_task(run_worker(stop, n_concurrent=n_concurrent))
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            await dispose_engine()

    app = FastAPI(
        title="oddish",
        description="Durable evaluation scheduler for Harbor agent tasks.",
        lifespan=lifespan,
    )

    @app.exception_handler(RecordNotFound)
    async def not_found(_: Request, exc: RecordNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.get("/health", summary="Liveness of the API and its database")
    async def health() -> dict[str, Any]:
        async with get_session() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok"}

    app.include_router(build_router())
    return app
