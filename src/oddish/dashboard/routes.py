"""The dashboard's pages, their live fragments and their actions, under /ui.

Each page reads through the same functions as the REST routes (``oddish.queue``,
``oddish.task_control``, ``oddish.task_retry``, the files of ``oddish.stored_files``). A page's
changing part is a fragment: the page's URL with ``fragment=1`` answers it alone, and
``static/dashboard.js`` asks for it every few seconds and swaps it in, so a page follows a run
without reloading; a fragment marked final (a finished task or trial) is not asked for again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader

from oddish import queue, task_control, task_retry
from oddish.api.app_state import temporal
from oddish.config import get_settings
from oddish.dashboard import views
from oddish.dashboard.session import (
    COOKIE_PATH,
    SESSION_COOKIE,
    ForeignPost,
    LoginRequired,
    has_session,
    key_matches,
    require_same_origin,
    require_session,
    session_cookie_value,
)
from oddish.dashboard.trial_output import read_trial_output
from oddish.db.records import RecordNotFound
from oddish.pass_rates import CONFIDENCE
from oddish.statuses import TERMINAL_JOB_STATUSES, TERMINAL_TASK_STATUSES
from oddish.storage import ObjectNotFound, StorageError
from oddish.stored_files import MAX_LISTED_FILES, task_files

PREFIX = "/ui"
HERE = Path(__file__).parent
EXPERIMENT_TASKS_PAGE = 100
MAX_OFFSET = 1_000_000_000
# Dashboard pages run our script and styles only: an escaping slip in a template still could
# not run anything; no page can be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
_environment.filters.update(views.FILTERS)
# The level of the pass@1 intervals the API gives (``scores.pass_at_1.confidence``).
_environment.globals["confidence"] = CONFIDENCE
templates = Jinja2Templates(env=_environment)


def _live_url(request: Request) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "fragment"]
    return f"{request.url.path}?{urlencode([*params, ('fragment', '1')])}"


def _page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """The page ``name``, or its live fragment alone when the request asks for it."""
    fragment = request.query_params.get("fragment") == "1"
    response = templates.TemplateResponse(
        request,
        f"{name}_live.html" if fragment else f"{name}.html",
        {
            **context,
            "live_url": _live_url(request),
            "logged_in": bool(get_settings().api_key),
        },
        status_code=status_code,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def _message(request: Request, title: str, text: str, back: str, status_code: int) -> Response:
    response = templates.TemplateResponse(
        request,
        "message.html",
        {"title": title, "text": text, "back": back, "logged_in": bool(get_settings().api_key)},
        status_code=status_code,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def _back_to(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path of this server, nothing else."""
    if target and target.startswith(PREFIX) and not target.startswith("//"):
        return target
    return PREFIX + "/"


def build_pages_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(require_session)])

    @router.get("", include_in_schema=False)
    async def root() -> RedirectResponse:
        return _back_to(PREFIX + "/")

    @router.get("/", response_class=HTMLResponse)
    async def experiments_page(request: Request) -> HTMLResponse:
        return _page(request, "experiments", {"experiments": await queue.list_experiments()})

    @router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
    async def experiment_page(request: Request, experiment_id: str, offset: int = 0) -> Response:
        try:
            experiment = await queue.get_experiment(
                experiment_id,
                tasks_limit=EXPERIMENT_TASKS_PAGE,
                tasks_offset=max(0, min(offset, MAX_OFFSET)),
            )
        except RecordNotFound as exc:
            return _message(request, "Not found", str(exc), PREFIX + "/", 404)
        keys = sorted(experiment["by_agent_model"])
        return _page(
            request,
            "experiment",
            {
                "experiment": experiment,
                "keys": keys,
                "tasks": views.review_first(experiment["tasks"]),
                "needs_review": views.needs_review,
            },
        )

    @router.get("/tasks/{task_id}", response_class=HTMLResponse)
    async def task_page(request: Request, task_id: str, key: str | None = None) -> Response:
        try:
            task = await queue.get_task_with_trials(task_id)
        except RecordNotFound as exc:
            return _message(request, "Not found", str(exc), PREFIX + "/", 404)
        trials = [
            t for t in task["trials"] if key is None or f"{t['agent']}/{t['model'] or '-'}" == key
        ]
        fragment = request.query_params.get("fragment") == "1"
        files, files_problem = ([], None) if fragment else await _task_files(task_id)
        return _page(
            request,
            "task",
            {
                "task": task,
                "trials": trials,
                "key": key,
                "files": files,
                "files_problem": files_problem,
                "final": task["status"] in TERMINAL_TASK_STATUSES,
                "needs_review": views.needs_review(task),
                "attempts_seconds": views.seconds_between,
            },
        )

    @router.get("/trials/{trial_id}", response_class=HTMLResponse)
    async def trial_page(request: Request, trial_id: str) -> Response:
        try:
            trial = await queue.get_trial(trial_id)
        except RecordNotFound as exc:
            return _message(request, "Not found", str(exc), PREFIX + "/", 404)
        output = await asyncio.to_thread(read_trial_output, trial)
        analysis = trial.get("analysis") or {}
        final = trial["status"] in TERMINAL_JOB_STATUSES and (
            trial["status"] == "cancelled" or analysis.get("status") in TERMINAL_JOB_STATUSES
        )
        attempt = trial["attempts"][-1]["number"] if trial["attempts"] else None
        return _page(
            request,
            "trial",
            {
                "trial": trial,
                "output": output,
                "timeline": views.timeline(trial.get("timings")),
                "final": final,
                "attempt": attempt,
                "seconds_between": views.seconds_between,
            },
        )

    @router.get("/queues", response_class=HTMLResponse)
    async def queues_page(request: Request) -> HTMLResponse:
        return _page(
            request,
            "queues",
            {
                "queues": await queue.get_queue_stats(),
                "default_limit": await queue.get_default_limit(),
            },
        )

    return router


async def _task_files(task_id: str) -> tuple[list[Any], str | None]:
    try:
        tree = task_files(await queue.get_task_location(task_id))
        listing = await asyncio.to_thread(tree.list_files, MAX_LISTED_FILES)
    except ObjectNotFound:
        return [], "the task's files are gone from storage"
    except StorageError as exc:
        return [], f"the storage failed: {exc}"
    return listing.files, None


async def _retried(request: Request, retried: Awaitable[Any], back: str) -> Response:
    """Back to the page the retry was asked from, or why nothing was retried."""
    try:
        await retried
    except task_retry.RetryRefused as exc:
        return _message(request, "Nothing retried", str(exc), back, 409)
    return _back_to(back)


def build_actions_router() -> APIRouter:
    """Every action: a POST from a dashboard page (the pages ask for confirmation first)."""
    router = APIRouter(
        prefix=PREFIX, dependencies=[Depends(require_session), Depends(require_same_origin)]
    )

    @router.post("/tasks/{task_id}/cancel")
    async def cancel_task(request: Request, task_id: str) -> Response:
        await task_control.cancel_task(task_id, client=temporal(request))
        return _back_to(f"{PREFIX}/tasks/{task_id}")

    @router.post("/tasks/{task_id}/retry")
    async def retry_task(request: Request, task_id: str) -> Response:
        retried = task_retry.retry_task(task_id, client=temporal(request))
        return await _retried(request, retried, f"{PREFIX}/tasks/{task_id}")

    @router.post("/trials/{trial_id}/retry")
    async def retry_trial(request: Request, trial_id: str) -> Response:
        retried = task_retry.retry_trial(trial_id, client=temporal(request))
        return await _retried(request, retried, f"{PREFIX}/trials/{trial_id}")

    @router.post("/experiments/{experiment_id}/cancel")
    async def cancel_experiment(request: Request, experiment_id: str) -> Response:
        await task_control.cancel_experiment(experiment_id, client=temporal(request))
        return _back_to(f"{PREFIX}/experiments/{experiment_id}")

    @router.post("/experiments/{experiment_id}/retry")
    async def retry_experiment(request: Request, experiment_id: str) -> Response:
        retried = task_retry.retry_experiment(experiment_id, client=temporal(request))
        return await _retried(request, retried, f"{PREFIX}/experiments/{experiment_id}")

    @router.post("/queues")
    async def set_limit(
        request: Request, queue_key: str = Form(max_length=200), limit: str = Form(max_length=6)
    ) -> Response:
        back = f"{PREFIX}/queues"
        try:
            value = int(limit)
            if not 1 <= value <= 10_000:
                raise ValueError("a limit is a whole number from 1 to 10000")
            await queue.set_queue_limit(queue_key, value)
        except ValueError as exc:
            return _message(request, "Limit not changed", str(exc), back, 422)
        return _back_to(back)

    return router


def build_login_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str | None = None) -> Response:
        if has_session(request):
            return _back_to(_safe_next(next))
        response = templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "wrong": False, "logged_in": False}
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    @router.post("/login", dependencies=[Depends(require_same_origin)])
    async def login(
        request: Request,
        key: str = Form(max_length=4096),
        next: str = Form(default="", max_length=2048),
    ) -> Response:
        if not get_settings().api_key:
            return _back_to(_safe_next(next))
        if not key_matches(key):
            refused = templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "wrong": True, "logged_in": False},
                status_code=401,
            )
            refused.headers.update(SECURITY_HEADERS)
            return refused
        response = _back_to(_safe_next(next))
        response.set_cookie(
            SESSION_COOKIE,
            session_cookie_value(),
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout", dependencies=[Depends(require_same_origin)])
    async def logout() -> Response:
        response = _back_to(f"{PREFIX}/login")
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    return router


def install(app: FastAPI) -> None:
    """Serve the dashboard on ``app`` under /ui, and send / there."""
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _: LoginRequired) -> Response:
        if request.method != "GET" or request.query_params.get("fragment") == "1":
            return PlainTextResponse("log in first", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _back_to(f"{PREFIX}/login?{urlencode({'next': target})}")

    @app.exception_handler(ForeignPost)
    async def foreign_post(_: Request, exc: ForeignPost) -> Response:
        return PlainTextResponse(f"refused: {exc}", status_code=403)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return _back_to(PREFIX + "/")

    app.include_router(build_login_router(), include_in_schema=False)
    app.include_router(build_pages_router(), include_in_schema=False)
    app.include_router(build_actions_router(), include_in_schema=False)
