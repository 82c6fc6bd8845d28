"""Shared steps of the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from starlette.types import Message, Receive, Scope, Send
from temporalio.client import Client
from temporalio.service import RPCError

from oddish.config import get_settings
from oddish.db.connection import get_session
from oddish.db.models import TaskModel
from oddish.embedded import TemporalDevServer, free_port
from oddish.queue import create_task, get_task_with_trials
from oddish.replay import replay_history
from oddish.schemas import AgentRunConfig, TaskSubmission
from oddish.workflows import workflow_id_for_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tasks"


def reset_settings(**env: str) -> None:
    """Set environment variables and have oddish's settings read them again."""
    os.environ.update(env)
    get_settings.cache_clear()


@contextlib.contextmanager
def using_settings(**env: str) -> Iterator[None]:
    """This process's settings with ``env`` until the block ends, when the previous ones come
    back."""
    saved = {name: os.environ.get(name) for name in env}
    reset_settings(**env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


async def submit(
    client: Client,
    task: str,
    *configs: AgentRunConfig,
    priority: int = 0,
    run_analysis: bool = False,
    **fields: object,
) -> str:
    submission = TaskSubmission(
        task_path=EXAMPLES / task,
        configs=list(configs),
        priority=priority,
        run_analysis=run_analysis,
        **fields,
    )
    return await create_task(submission, client=client)


def local(agent: str = "oracle", n_trials: int = 1, **spec: object) -> AgentRunConfig:
    return AgentRunConfig(agent=agent, environment="local", n_trials=n_trials, **spec)


async def stored_task_file(task_id: str, name: str, cache_dir: Path) -> str:
    """A file of the task as stored at submission (its archive in storage, fetched through a
    task cache of its own in ``cache_dir``)."""
    from oddish.db import records
    from oddish.task_cache import TaskCache, task_dir_for

    async with get_session() as session:
        task = await records.get_task(session, task_id)
    cache = TaskCache(cache_dir, 1024**3)
    async with task_dir_for(task.task_path, task.archive_sha256, cache=cache) as task_dir:
        return (task_dir / name).read_text()


async def wait_for_task(client: Client, task_id: str, timeout: float = 300) -> dict:
    await asyncio.wait_for(
        client.get_workflow_handle(workflow_id_for_task(task_id)).result(), timeout
    )
    return await get_task_with_trials(task_id)


async def wait_until_running(task_id: str, timeout: float = 30) -> dict:
    """The task as soon as one of its trials runs."""
    for _ in range(int(timeout * 10)):
        task = await get_task_with_trials(task_id)
        if any(t["status"] == "running" for t in task["trials"]):
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"no trial of {task_id} started within {timeout}s")


HISTORIES = Path(__file__).resolve().parent / "histories"
# The workflow id each recorded history ran under (histories recorded before: task/<file stem>).
WORKFLOW_IDS = HISTORIES / "workflow_ids.json"


async def check_history(client: Client, task_id: str, scenario: str) -> None:
    """Replay every run of the task's workflow against this code; with ODDISH_RECORD_HISTORIES=1
    also keep them under tests/histories, which test_replay replays on every later run."""
    handle_id = workflow_id_for_task(task_id)
    runs = [w.run_id async for w in client.list_workflows(f'WorkflowId = "{handle_id}"')]
    assert runs, f"no run of {handle_id} is visible"
    # A large task's batches (child workflows) too, each under the task's id.
    batches: dict[str, list[str]] = {}
    async for found in client.list_workflows(f'WorkflowId STARTS_WITH "{handle_id}/"'):
        batches.setdefault(found.id, []).append(found.run_id)
    for workflow_id, run_ids, name in [(handle_id, runs, scenario)] + [
        (child, ids, f"{scenario}-{child.rsplit('/', 1)[1]}")
        for child, ids in sorted(batches.items())
    ]:
        for number, run_id in enumerate(reversed(run_ids), start=1):
            handle = client.get_workflow_handle(workflow_id, run_id=run_id)
            history = await handle.fetch_history()
            failure = await replay_history(history)
            assert failure is None, f"{name} run {number} does not replay: {failure}"
            if os.environ.get("ODDISH_RECORD_HISTORIES") == "1":
                HISTORIES.mkdir(exist_ok=True)
                (HISTORIES / f"{name}-run{number}.json").write_text(history.to_json())
                # Replayed under the id it ran with: a task's batches are named after it.
                ids = json.loads(WORKFLOW_IDS.read_text()) if WORKFLOW_IDS.exists() else {}
                ids[f"{name}-run{number}"] = workflow_id
                WORKFLOW_IDS.write_text(json.dumps(ids, indent=1, sort_keys=True) + "\n")


def unique_key(label: str) -> str:
    return f"test/{label}-{secrets.token_hex(3)}"


def intervals(task: dict) -> list[tuple[datetime, datetime]]:
    return [
        (datetime.fromisoformat(t["started_at"]), datetime.fromisoformat(t["finished_at"]))
        for t in task["trials"]
    ]


def max_overlap(spans: list[tuple[datetime, datetime]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda ev: (ev[0], ev[1])
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def sleeping_sandboxes(seconds: float | str) -> str:
    return subprocess.run(
        ["pgrep", "-af", f"^sleep {re.escape(str(seconds))}$"], capture_output=True, text=True
    ).stdout.strip()


async def slot_rows(queue_key: str) -> int:
    """Rows of the slot table (waiting or holding) of one queue key."""
    async with get_session() as session:
        return (
            await session.execute(
                text("SELECT count(*) FROM pgqueuer WHERE entrypoint = :key"), {"key": queue_key}
            )
        ).scalar_one()


# Attempt statuses: the one that settled the trial, and those a later attempt may follow.
FINAL_ATTEMPT = {"success", "failed"}


SUPERSEDED_ATTEMPT = {"lost", "infra_error"}


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def attempts_of(trial: dict) -> list[dict]:
    return sorted(trial["attempts"], key=lambda a: a["number"])


def assert_each_trial_recorded_once(task: dict, n_trials: int) -> None:
    """n trials, each with exactly one final attempt, last; every earlier one superseded."""
    trials = task["trials"]
    assert sorted(t["index"] for t in trials) == list(range(n_trials))
    for trial in trials:
        statuses = [a["status"] for a in attempts_of(trial)]
        assert statuses, f"trial {trial['index']} has no attempt"
        assert statuses[-1] in FINAL_ATTEMPT, (trial["index"], statuses)
        assert all(s in SUPERSEDED_ATTEMPT for s in statuses[:-1]), (trial["index"], statuses)
        assert sum(s in FINAL_ATTEMPT for s in statuses) == 1
        assert trial["status"] == "success" and trial["reward"] == 1.0, trial
        assert parse(trial["finished_at"]) >= parse(attempts_of(trial)[-1]["finished_at"])


def next_attempt_start(trial: dict) -> datetime:
    """When the attempt after the trial's lost one started."""
    attempts = attempts_of(trial)
    i = next(i for i, a in enumerate(attempts) if a["status"] == "lost")
    return parse(attempts[i + 1]["started_at"])


def attempt_spans(
    task: dict, *, lost_ended_by: datetime | None = None
) -> list[tuple[datetime, datetime]]:
    """When each attempt ran. An attempt that ran to the end records its own finish. A ``lost``
    attempt's ``finished_at`` is when the next attempt noticed it lost, later than when it stopped:
    it is cut at ``lost_ended_by`` (the moment its worker was killed; the sandbox dies with the
    worker) when that is known, and otherwise kept whole, which can only over-count."""
    spans = []
    for trial in task["trials"]:
        for a in trial["attempts"]:
            start, end = parse(a["started_at"]), parse(a["finished_at"])
            if a["status"] == "lost" and lost_ended_by is not None:
                end = min(end, lost_ended_by)
            spans.append((start, end))
    return spans


def sleeping(seconds: float | str) -> int:
    """Sandboxed agents asleep for ``seconds`` right now (the sleep task's solve.sh). pgrep sees the
    whole machine and test files run in parallel: each file that counts sleeps uses a duration no
    other file uses (a fraction of its own)."""
    out = subprocess.run(
        ["pgrep", "-f", f"^sleep {re.escape(str(seconds))}$"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return len(out.split())


async def poll(condition, *, timeout: float, every: float = 0.2, what: str = "condition"):
    """The first truthy value of ``await condition()`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(every)


def task_archive(
    task_dir: Path, *, extra: dict[str, bytes] | None = None, folder: str = ""
) -> bytes:
    """A gzipped tar of ``task_dir`` (optionally under one folder), with extra raw members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(task_dir.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=f"{folder}{path.relative_to(task_dir)}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def task_archive_without(task_dir: Path, skipped: str) -> bytes:
    """A gzipped tar of ``task_dir`` without its top-level entry ``skipped``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(task_dir.rglob("*")):
            relative = path.relative_to(task_dir)
            if path.is_file() and relative.parts[0] != skipped:
                tar.add(path, arcname=str(relative))
    return buffer.getvalue()


def symlink_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("task.toml")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    return buffer.getvalue()


def serve_api(
    env: dict[str, str], log_path: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "oddish.api", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"API did not start:\n{log_path.read_text()}")
        time.sleep(0.2)


@contextlib.contextmanager
def api_on_own_queue(
    oddish_env: dict[str, str], work_dir: Path, label: str
) -> Iterator[tuple[str, str]]:
    """An API process with a worker in it, on a task queue of its own (so that no other test's
    worker takes its work): its URL and the queue, until the block ends."""
    queue = f"oddish-{label}-{secrets.token_hex(4)}"
    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": queue}
    process, url = serve_api(env, work_dir / f"api-{queue}.log")
    try:
        yield url, queue
    finally:
        process.terminate()
        process.wait(timeout=60)


async def until_started(client: Client, task_id: str, timeout: float = 60) -> None:
    """Wait for a worker to start the task's workflow (result() needs one to exist)."""
    handle = client.get_workflow_handle(workflow_id_for_task(task_id))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await handle.describe()
            return
        except RPCError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


class RecordingApp:
    """An ASGI app behind the middleware under test: reads the whole body, answers 200, and
    records the scopes it saw and the bytes it read."""

    def __init__(self) -> None:
        self.scopes: list[str] = []
        self.bytes_read = 0

    @property
    def called(self) -> bool:
        return "http" in self.scopes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope["type"])
        if scope["type"] != "http":
            return
        more = True
        while more:
            message: Message = await receive()
            self.bytes_read += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def restartable_temporal_server(directory: Path) -> TemporalDevServer:
    """A Temporal dev server of the test's own (not started), keeping its data in ``directory``
    so that it can be stopped and started again."""
    return TemporalDevServer(
        port=free_port(),
        ui_port=None,
        db_file=directory / "temporal.db",
        log_file=directory / "temporal.log",
    )


async def open_test_attempt(trial_id: str, lane: str | None = None) -> int:
    """Open an attempt of a recorded trial (run 1) as a worker would (in slot lane ``lane``);
    its id."""
    from oddish.db import attempts
    from oddish.db.connection import autocommit_connection

    async with autocommit_connection() as conn:
        opened = await attempts.open_attempt(
            conn,
            trial_id=trial_id,
            run_number=1,
            temporal_attempt=1,
            worker="test",
            alive_within_sec=1.0,
            lane=lane,
        )
    assert isinstance(opened, attempts.OpenedAttempt)
    return opened.attempt_id


def running_task_row(task_id: str, experiment_id: str, name: str = "task") -> TaskModel:
    """A task's row as its workflow leaves it running, for tests that write rows directly."""
    return TaskModel(
        id=task_id,
        experiment_id=experiment_id,
        name=name,
        task_path=f"tasks/{task_id}/x.tar.gz",
        status="running",
        priority=0,
        run_analysis=False,
        workflow_id=f"task/{task_id}",
    )
