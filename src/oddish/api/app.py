"""The FastAPI application: HTTP only; every rule lives in ``oddish.queue`` and below."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import (
    APIRouter,
    FastAPI,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from temporalio.service import RPCError, RPCStatusCode

from oddish import __version__, queue, task_control, task_judge, task_retry
from oddish.api import views
from oddish.api.app_state import temporal
from oddish.api.auth import OPEN_PATHS, ApiKeyGate
from oddish.api.body_limit import BodySizeLimit
from oddish.api.docs import add_docs
from oddish.api.files import build_files_router
from oddish.api.judge_routes import build_judge_router
from oddish.api.original_routes import build_original_router
from oddish.api.trial_files import read_logs, read_result
from oddish.api.uploads import (
    collect_uploads_periodically,
    prepare_task_of_archive,
    store_upload,
    stored_upload,
)
from oddish.archives import ArchiveError
from oddish.config import get_settings
from oddish.db import migrations
from oddish.db.connection import (
    database_unreachable,
    dispose_engine,
    get_session,
    is_unstorable_value,
)
from oddish.db.records import RecordNotFound
from oddish.gc_freeze import freeze_startup_objects
from oddish.judge.models import JudgeNotConfigured
from oddish.request_bodies import ExperimentUpdate, LimitUpdate, SweepRequest, SweepSettings
from oddish.schemas import MAX_TRIALS_PER_TASK, TaskSubmission
from oddish.started_marks import STARTED_MARKS
from oddish.statuses import TaskStatus
from oddish.storage import StorageError, StorageUnavailable, get_storage
from oddish.task_cache import task_dir_for
from oddish.temporal_gateway import TemporalConnection, TemporalUnavailable
from oddish.worker.health import WorkerHealth

# GET /tasks has no response model (three shapes): each shape is checked against its model and
# written by pydantic's serializer. FastAPI's generic encoder took half of the request's time,
# and writes a NaN (a verifier's reward can be one) that no JSON reader accepts.
TASK_PAGE = TypeAdapter(views.TaskPage)
TASK_SUMMARIES = TypeAdapter(list[views.TaskSummary])
TASK_DETAILS = TypeAdapter(list[views.TaskDetail])


def _json_answer(adapter: TypeAdapter[Any], value: Any) -> Response:
    return Response(
        adapter.dump_json(adapter.validate_python(value), exclude_unset=True),
        media_type="application/json",
    )


log = logging.getLogger(__name__)

# Answers of a Temporal server that is down, restarting or too slow right now.
TEMPORAL_DOWN = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}
)
DATABASE_DRIVER_MODULES = ("asyncpg", "sqlalchemy")


def _raised_by_the_database_driver(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any(
        any(f"/{module}/" in frame.filename for module in DATABASE_DRIVER_MODULES)
        for frame in frames
    )


# The original Oddish's GET /tasks answered at most this many tasks, with their trials.
ORIGINAL_LIST_LIMIT = 100
# Pages past this are refused with a reason, not overflowing Postgres' bigint.
MAX_OFFSET = 1_000_000_000


# Room for the multipart envelope around the archive.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UPLOAD_PATH = "/tasks/upload"
TASK_PATH = "/tasks/{task_id}"
# How long the API, shutting down, waits for the last started marks to be written.
MARKS_FLUSH_TIMEOUT_SEC = 5.0
RUN_PATH = "/tasks/run"


class ErrorBody(BaseModel):
    detail: Any = Field(description="why the request was refused")


# What any route may answer besides its own result; the OpenAPI schema lists them all.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that cannot be parsed"},
    401: {"model": ErrorBody, "description": "missing or wrong key (when ODDISH_API_KEY is set)"},
    404: {"model": ErrorBody, "description": "no such task, trial, experiment or upload"},
    413: {"model": ErrorBody, "description": "a body over its size limit"},
    422: {"model": ErrorBody, "description": "a value out of bounds, with the field and reason"},
    503: {"model": ErrorBody, "description": "the database, Temporal or the storage failed"},
}
# A created task whose workflow Temporal did not take yet.
CREATED_LATER: dict[int | str, dict[str, Any]] = {
    202: {
        "model": views.SweepCreated,
        "description": "recorded; its workflow starts once Temporal answers (see `warning`)",
    }
}
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "nothing to retry, with the reason"}
}


async def _submission_of_task(body: SweepRequest, task_id: str) -> TaskSubmission:
    """More trials of an existing task's stored version: a new task of the same archive, in
    that task's experiment unless the body names another."""
    source = await queue.get_task_source(task_id)
    if body.experiment_id is None and body.experiment_name is None:
        body = body.model_copy(update={"experiment_id": source.experiment_id})
    async with task_dir_for(source.location, source.sha256) as path:
        return await asyncio.to_thread(body.submission, path, source.name)


def _submission_of_upload(body: SweepRequest, upload_id: str) -> TaskSubmission:
    """A new task of an uploaded version. Reads files: off the event loop."""
    upload = stored_upload(upload_id)
    return body.submission(upload.path, upload.name, checked=upload.check, packed=upload.archive)


def _created(task: queue.CreatedTask, request: Request) -> Any:
    """A created task's answer; 202 with a warning when its workflow could not start yet."""
    # Answered from what was recorded: reading the task back would cost more than the rest.
    created = {
        "id": task.id,
        "experiment": task.experiment_id,
        "trials_count": task.trials_count,
        # request.url_for("get_task", ...) would search every route on each submission.
        "url": f"{str(request.base_url).rstrip('/')}{TASK_PATH.format(task_id=task.id)}",
    }
    if task.not_started is None:
        return created
    log.warning("%s", task.not_started)
    return JSONResponse(status_code=202, content={**created, "warning": str(task.not_started)})


def build_router() -> APIRouter:
    router = APIRouter(responses=ERROR_RESPONSES)

    @router.post(
        UPLOAD_PATH,
        summary="Upload a task: a gzipped tar of one task directory",
        response_model=views.Uploaded,
        response_model_exclude_unset=True,
    )
    async def upload_task(file: UploadFile = File(description="task.tar.gz")) -> dict[str, Any]:
        return await asyncio.to_thread(store_upload, file.file)

    @router.post(
        "/tasks/sweep",
        summary="Create a task of an uploaded version (or of an existing task) and run its trials",
        response_model=views.SweepCreated,
        response_model_exclude_unset=True,
        responses=CREATED_LATER,
    )
    async def create_sweep(body: SweepRequest, request: Request) -> Any:
        if body.task_id is not None:
            submission = await _submission_of_task(body, body.task_id)
        else:
            submission = await asyncio.to_thread(_submission_of_upload, body, body.upload_id or "")
        # Recorded even while Temporal is unreachable: the workers start it once it answers.
        connection: TemporalConnection = request.app.state.temporal
        task = await queue.submit_task(submission, client=connection.client)
        return _created(task, request)

    @router.post(
        RUN_PATH,
        summary="Upload a task and run its trials: /tasks/upload and /tasks/sweep in one request",
        response_model=views.SweepCreated,
        response_model_exclude_unset=True,
        responses=CREATED_LATER,
        description="The archive is checked as POST /tasks/upload checks it and stored as the "
        "new task's own, with no upload kept: what `oddish run` sends for each task directory. "
        "`sweep` is the JSON body of POST /tasks/sweep without `upload_id` and `task_id`.",
    )
    async def run_task(
        request: Request,
        file: UploadFile = File(description="task.tar.gz"),
        sweep: str = Form(
            description="the sweep, as JSON: POST /tasks/sweep's body without upload_id and task_id"
        ),
    ) -> Any:
        body = SweepSettings.model_validate_json(sweep)
        connection: TemporalConnection = request.app.state.temporal
        task = await queue.submit_prepared(
            functools.partial(prepare_task_of_archive, file.file, body),
            client=connection.client,
        )
        return _created(task, request)

    @router.get(
        "/tasks",
        summary="List tasks, newest first, one page at a time",
        # Documented, not filtered: the answer is one of three shapes (see the description).
        response_model=None,
        responses={
            200: {
                "model": views.TaskList,
                "description": "a page; with the original's parameters a bare list",
            }
        },
        description="One page: `{tasks, total, limit, offset, next_offset}`. Asked with the "
        "original Oddish's parameters (`experiment_id=` or `include_trials=`) it answers the "
        "original's shape instead: a bare list of at most `limit` (default 100) tasks, each with "
        "its trials unless `include_trials=false`, and no way to tell that more exist; page with "
        "`experiment=` and `offset` instead.",
    )
    async def list_tasks(
        status: TaskStatus | None = None,
        experiment: str | None = Query(default=None, description="experiment id or name"),
        user: str | None = None,
        limit: int | None = Query(default=None, ge=1, le=500, description="default 50"),
        offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
        experiment_id: str | None = Query(
            default=None, description="the original's name of `experiment`: a bare list"
        ),
        include_trials: bool | None = Query(
            default=None, description="the original's: a bare list, with trials unless false"
        ),
    ) -> Any:
        original = experiment_id is not None or include_trials is not None
        if not original:
            page = await queue.list_tasks(
                status=status, experiment_id=experiment, user=user, limit=limit or 50, offset=offset
            )
            return _json_answer(TASK_PAGE, page)
        with_trials = include_trials is not False
        if with_trials and (limit or 0) > ORIGINAL_LIST_LIMIT:
            raise HTTPException(
                422, detail=f"include_trials lists at most {ORIGINAL_LIST_LIMIT} tasks (limit)"
            )
        page = await queue.list_tasks(
            status=status,
            experiment_id=experiment_id or experiment,
            user=user,
            limit=limit or ORIGINAL_LIST_LIMIT,
            offset=offset,
        )
        if not with_trials:
            return _json_answer(TASK_SUMMARIES, page["tasks"])
        return _json_answer(
            TASK_DETAILS, [await queue.get_task_with_trials(t["id"]) for t in page["tasks"]]
        )

    @router.get(
        TASK_PATH,
        summary="A task with its trials and verdict",
        response_model=views.TaskDetail,
        response_model_exclude_unset=True,
    )
    async def get_task(task_id: str) -> dict[str, Any]:
        return await queue.get_task_with_trials(task_id)

    @router.get(
        "/tasks/{task_id}/trials/{index}",
        summary="A trial of a task by its index",
        response_model=views.Trial,
        response_model_exclude_unset=True,
    )
    async def get_trial_by_index(
        task_id: str,
        index: int = Path(ge=0, lt=MAX_TRIALS_PER_TASK),
    ) -> dict[str, Any]:
        return await queue.get_trial_by_index(task_id, index)

    @router.get(
        "/trials/{trial_id}",
        summary="A trial with its attempts and analysis",
        response_model=views.Trial,
        response_model_exclude_unset=True,
    )
    async def get_trial(trial_id: str) -> dict[str, Any]:
        return await queue.get_trial(trial_id)

    @router.get(
        "/trials/{trial_id}/result",
        summary="Harbor's result.json of the latest attempt",
        response_model=views.HarborTrialResult,
        response_model_exclude_unset=True,
    )
    async def get_trial_result(trial_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(read_result, await queue.get_trial(trial_id))

    @router.get(
        "/trials/{trial_id}/logs",
        summary="Text files of the latest attempt's output",
        response_model=views.TrialLogs,
        response_model_exclude_unset=True,
    )
    async def get_trial_logs(trial_id: str) -> dict[str, Any]:
        trial = await queue.get_trial(trial_id)
        return {"trial_id": trial_id, "files": await asyncio.to_thread(read_logs, trial)}

    @router.post(
        "/tasks/{task_id}/cancel",
        summary="Stop a task: its sandboxes, slots and trials",
        response_model=views.TaskCancelled,
        response_model_exclude_unset=True,
    )
    async def cancel_task(task_id: str, request: Request) -> dict[str, Any]:
        status = await task_control.cancel_task(task_id, client=temporal(request))
        return {"id": task_id, "status": status}

    @router.post(
        "/tasks/{task_id}/retry",
        summary="Run a task's trials that did not pass again, then redo its verdict",
        response_model=views.Retried,
        response_model_exclude_unset=True,
        responses=REFUSED,
    )
    async def retry_task(task_id: str, request: Request) -> dict[str, Any]:
        retried = await task_retry.retry_task(task_id, client=temporal(request))
        return {"task_id": task_id, "retried": retried}

    @router.post(
        "/trials/{trial_id}/retry",
        summary="Run a trial that did not pass (partial, failed, error, cancelled) again",
        response_model=views.Retried,
        response_model_exclude_unset=True,
        responses=REFUSED,
    )
    async def retry_trial(trial_id: str, request: Request) -> dict[str, Any]:
        task_id, retried = await task_retry.retry_trial(trial_id, client=temporal(request))
        return {"task_id": task_id, "retried": retried}

    @router.post(
        "/experiments/{experiment_id}/retry",
        summary="Run the trials that did not pass of every task of an experiment again",
        response_model=views.ExperimentRetried,
        response_model_exclude_unset=True,
        responses=REFUSED,
    )
    async def retry_experiment(experiment_id: str, request: Request) -> dict[str, Any]:
        done = await task_retry.retry_experiment(experiment_id, client=temporal(request))
        return {
            "experiment_id": experiment_id,
            "tasks": [{"task_id": t, "retried": r} for t, r in done],
        }

    @router.post(
        "/experiments/{experiment_id}/cancel",
        summary="Stop every unfinished task of an experiment",
        response_model=views.ExperimentCancelled,
        response_model_exclude_unset=True,
    )
    async def cancel_experiment(experiment_id: str, request: Request) -> dict[str, Any]:
        cancelled = await task_control.cancel_experiment(experiment_id, client=temporal(request))
        return {
            "experiment_id": experiment_id,
            "tasks": [{"id": t, "status": s} for t, s in cancelled],
        }

    @router.delete(
        "/tasks/{task_id}",
        summary="Stop a task, then delete it and its files",
        response_model=views.TaskDeleted,
        response_model_exclude_unset=True,
    )
    async def delete_task(task_id: str, request: Request) -> dict[str, Any]:
        await queue.get_task_with_trials(task_id)  # 404 before anything is stopped
        await task_control.delete_task(task_id, client=temporal(request))
        return {"id": task_id, "deleted": True}

    @router.delete(
        "/experiments/{experiment_id}",
        summary="Stop an experiment's tasks, then delete them and the experiment",
        response_model=views.ExperimentDeleted,
        response_model_exclude_unset=True,
    )
    async def delete_experiment(experiment_id: str, request: Request) -> dict[str, Any]:
        n = await task_control.delete_experiment(experiment_id, client=temporal(request))
        return {"id": experiment_id, "deleted": True, "tasks_deleted": n}

    @router.patch(
        "/experiments/{experiment_id}",
        summary="Rename an experiment",
        response_model=views.Experiment,
        response_model_exclude_unset=True,
    )
    async def rename_experiment(experiment_id: str, update: ExperimentUpdate) -> dict[str, Any]:
        await queue.rename_experiment(experiment_id, update.name)
        return await queue.get_experiment(experiment_id)

    @router.get(
        "/experiments",
        summary="List experiments",
        response_model=list[views.ExperimentListed],
        response_model_exclude_unset=True,
    )
    async def list_experiments() -> list[dict[str, Any]]:
        return await queue.list_experiments()

    @router.get(
        "/experiments/{experiment_id}",
        summary="An experiment: per agent/model trials, pass rate, mean reward, statuses",
        response_model=views.Experiment,
        response_model_exclude_unset=True,
    )
    async def get_experiment(
        experiment_id: str,
        tasks_limit: int = Query(
            default=queue.EXPERIMENT_TASKS_PAGE, ge=0, le=500, description="tasks shown"
        ),
        tasks_offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        return await queue.get_experiment(
            experiment_id, tasks_limit=tasks_limit, tasks_offset=tasks_offset
        )

    @router.get(
        "/experiments/{experiment_id}/trials",
        summary="An experiment's trials in brief, one page at a time (by task, then index)",
        response_model=views.ExperimentTrials,
        response_model_exclude_unset=True,
    )
    async def get_experiment_trials(
        experiment_id: str,
        after: str | None = Query(
            default=None, max_length=200, description="the previous page's next_after"
        ),
        limit: int = Query(default=queue.EXPERIMENT_TRIALS_PAGE, ge=1, le=10_000),
    ) -> dict[str, Any]:
        try:
            return await queue.get_experiment_trials(experiment_id, after=after, limit=limit)
        except queue.BadCursor as exc:
            raise HTTPException(422, detail=str(exc)) from exc

    @router.get(
        "/limits",
        summary="Per queue key: the limit, and trials waiting and running",
        response_model=views.Limits,
        response_model_exclude_unset=True,
    )
    async def get_limits() -> dict[str, Any]:
        return {"default": await queue.get_default_limit(), "queues": await queue.get_queue_stats()}

    @router.put(
        "/limits/{queue_key:path}",
        summary="Set a queue key's limit; takes effect at once",
        response_model=views.LimitSet,
        response_model_exclude_unset=True,
    )
    async def put_limit(
        update: LimitUpdate,
        queue_key: str = Path(min_length=1, max_length=200, pattern=r"\S"),
    ) -> dict[str, Any]:
        try:
            key = await queue.set_queue_limit(queue_key, update.limit)
        except ValueError as exc:  # a key of only blanks and control characters, say
            raise HTTPException(422, detail=str(exc)) from exc
        return {"queue_key": key, "limit": update.limit}

    return router


def create_app(*, run_workers: bool = False, n_concurrent: dict[str, int] | None = None) -> FastAPI:
    """The app; with ``run_workers`` it also runs a worker (Temporal worker + slot dispatcher)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Task archives go to storage: a store that is misconfigured refuses the start
        # (StorageMisconfigured names the setting to fix).
        await asyncio.to_thread(get_storage().check)
        await migrations.upgrade()
        stop = asyncio.Event()
        # The API serves while Temporal is down (reads, and submissions the workers start later).
        connection = TemporalConnection()
        app.state.temporal = connection
        connecting = asyncio.create_task(connection.keep_connecting(stop))
        # Uploads no sweep used for ODDISH_UPLOAD_RETENTION_SEC are deleted, now and every hour.
        collecting = asyncio.create_task(collect_uploads_periodically(stop))
        worker: asyncio.Task[None] | None = None
        app.state.worker_health = None
        if run_workers:
            from oddish.worker.runner import run_worker

            health = WorkerHealth(poll_interval_sec=get_settings().dispatcher_poll_interval_sec)
            app.state.worker_health = health
            worker = asyncio.create_task(
                run_worker(stop, n_concurrent=n_concurrent, migrate=False, health=health)
            )
        else:
            # Limits live in Postgres: the workers elsewhere honour them from their next grant.
            await queue.apply_limits(n_concurrent or {})
        freeze_startup_objects()
        try:
            yield
        finally:
            stop.set()
            # The last submissions' marks, so no worker needs to ask Temporal about them; not
            # for long (the database may be down): a lost mark only costs a worker a question.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(STARTED_MARKS.flush(), MARKS_FLUSH_TIMEOUT_SEC)
            await connecting
            await collecting
            if worker is not None:
                await worker
            await dispose_engine()

    app = FastAPI(
        title="oddish",
        version=__version__,
        description="Durable evaluation scheduler for Harbor agent tasks.",
        lifespan=lifespan,
        # Served from the package's own assets (add_docs): FastAPI's load them from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    settings = get_settings()
    app.add_middleware(
        BodySizeLimit,
        limits={
            path: settings.upload_max_bytes + MULTIPART_OVERHEAD_BYTES
            for path in (UPLOAD_PATH, RUN_PATH)
        },
        default_max_bytes=settings.api_max_body_bytes,
    )
    # Added last, so it runs first: no body is read before the key is checked.
    app.add_middleware(ApiKeyGate)

    @app.exception_handler(RecordNotFound)
    async def not_found(_: Request, exc: RecordNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(task_judge.JudgeRefused)
    async def judge_refused(_: Request, exc: task_judge.JudgeRefused) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(JudgeNotConfigured)
    async def judge_not_configured(_: Request, exc: JudgeNotConfigured) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(task_retry.RetryRefused)
    async def retry_refused(_: Request, exc: task_retry.RetryRefused) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(ArchiveError)
    async def bad_archive(_: Request, exc: ArchiveError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})

    @app.exception_handler(StorageError)
    async def storage_failed(_: Request, exc: StorageError) -> JSONResponse:
        # Storing or deleting a task's archive, or reading a trial's output, failed: the store,
        # not the request, is at fault.
        if isinstance(exc, StorageUnavailable):
            log.warning("storage unavailable: %s", exc)
        else:
            log.error("storage error: %s", exc)
        return JSONResponse(
            status_code=503,
            content={
                "detail": "the storage (task archives, trial output) failed; try again shortly"
            },
        )

    @app.exception_handler(ValidationError)
    async def invalid(_: Request, exc: ValidationError) -> JSONResponse:
        # Raised while building a submission from an accepted body: still the client's input.
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Without echoing the input back: it may be huge, or nested deeper than the encoder goes.
        errors = [
            {key: error[key] for key in ("type", "loc", "msg") if key in error}
            for error in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    @app.exception_handler(DBAPIError)
    async def database_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if is_unstorable_value(exc):
            # The schemas bound what they can; whatever Postgres still refuses (a NUL character,
            # say) is the client's input too. Nothing was written: the transaction rolled back.
            return JSONResponse(
                status_code=422,
                content={
                    "detail": f"a value the database cannot store: {str(exc.orig).splitlines()[0]}"
                },
            )
        if database_unreachable(exc):
            return JSONResponse(
                status_code=503,
                content={"detail": "the database cannot be reached; try again shortly"},
            )
        log.exception("database error", exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal database error"})

    @app.exception_handler(OSError)
    async def unreachable(_: Request, exc: OSError) -> JSONResponse:
        # asyncpg raises plain OSErrors when it cannot connect (a unix socket that is gone is a
        # FileNotFoundError): those are the database being down, not a fault of the request.
        if _raised_by_the_database_driver(exc):
            return JSONResponse(
                status_code=503,
                content={"detail": "the database cannot be reached; try again shortly"},
            )
        log.exception("file error", exc_info=exc)
        return JSONResponse(
            status_code=503,
            content={"detail": f"the server cannot read or write its files: {exc.strerror}"},
        )

    @app.exception_handler(TemporalUnavailable)
    async def temporal_not_yet(_: Request, exc: TemporalUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(RPCError)
    async def temporal_unreachable(_: Request, exc: RPCError) -> JSONResponse:
        if exc.status in TEMPORAL_DOWN:
            return JSONResponse(
                status_code=503,
                content={"detail": f"Temporal cannot be reached; try again shortly ({exc})"},
            )
        log.exception("Temporal error", exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": f"Temporal error: {exc}"})

    @app.get(
        "/health",
        summary="Liveness of the API, its database, Temporal and the worker in this process",
        response_model=views.Health,
        response_model_exclude_unset=True,
        responses={503: {"model": ErrorBody, "description": "the database cannot be reached"}},
    )
    async def health(request: Request) -> dict[str, Any]:
        async with get_session() as session:
            await session.execute(text("SELECT 1"))
        connection: TemporalConnection = request.app.state.temporal
        worker: WorkerHealth | None = request.app.state.worker_health
        temporal_ok = connection.client is not None
        return {
            # Degraded: reads work; new work waits until Temporal and the worker are back.
            "status": "ok" if temporal_ok and (worker is None or worker.ok) else "degraded",
            "database": "ok",
            "temporal": "connected" if temporal_ok else f"connecting ({connection.error})",
            "worker": "not in this process" if worker is None else worker.report(),
        }

    # Before build_router's: /tasks/browse must not be taken for a task id.
    app.include_router(build_original_router(), responses=ERROR_RESPONSES)
    app.include_router(build_router())
    app.include_router(build_files_router())
    app.include_router(build_judge_router())
    add_docs(app)
    # Imported here: the dashboard reads through this package's modules (app_state, the files).
    from oddish import dashboard

    dashboard.install(app)
    describe_the_key(app)
    return app


BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "ODDISH_API_KEY: required on every route but /health (and /docs, "
    "/openapi.json) when the server sets it",
}


def describe_the_key(app: FastAPI) -> None:
    """The bearer key as the schema's security scheme (ApiKeyGate enforces it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {"bearerKey": BEARER_SCHEME}
            schema["security"] = [{"bearerKey": []}]
            for path in OPEN_PATHS:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
