"""Submissions that lose nothing: a submitter killed between recording a task and starting its
workflow, and a submission while Temporal is down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from helpers import (
    EXAMPLES,
    local,
    reset_settings,
    restartable_temporal_server,
    serve_api,
    submit,
    task_archive,
    until_started,
    wait_for_task,
)
from oddish import queue
from oddish.db import records
from oddish.db.connection import get_session
from oddish.schemas import TaskSubmission
from oddish.started_marks import STARTED_MARKS
from oddish.temporal_gateway import connect
from oddish.worker.unstarted import BATCH as STARTER_BATCH

# Records the task, then dies the way a killed API process would: before the workflow starts.
KILLED_SUBMITTER = textwrap.dedent("""
    import asyncio, os, sys
    from oddish import queue
    from oddish.schemas import AgentRunConfig, TaskSubmission
    from oddish.temporal_gateway import connect

    async def die(*_args, **_kwargs):
        os._exit(9)

    async def main():
        queue.start_task_workflow = die
        submission = TaskSubmission(
            task_path=sys.argv[1], submission_key=sys.argv[2],
            configs=[AgentRunConfig(agent="oracle", environment="local", n_trials=2)])
        await queue.create_task(submission, client=await connect())

    asyncio.run(main())
""")


async def died_before_marking(task_id: str) -> None:
    pass


async def unmarked(task_ids: list[str]) -> set[str]:
    """Those of the tasks no workflow is known to have started for."""
    async with get_session() as session:
        tasks = [await records.get_task(session, task_id) for task_id in task_ids]
    return {task.id for task in tasks if task.workflow_started_at is None}


async def pending_task_by_key(key: str) -> str:
    async with get_session() as session:
        task = await records.task_by_submission_key(session, key)
        assert task is not None, "the task's rows were committed before the process died"
        assert task.status == "pending"
        return task.id


async def test_task_of_a_submitter_killed_before_starting_it_runs(
    oddish_env: dict[str, str],
    task_queue: str,
    start_worker,
    temporal_client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ahead of it, more than a batch of tasks whose submitters died after starting their
    # workflows (on a task queue no worker serves, so they stay pending) but before marking them.
    reset_settings(ODDISH_TEMPORAL_TASK_QUEUE=f"{task_queue}-unserved")
    with monkeypatch.context() as patched:
        patched.setattr(queue, "mark_workflow_started", died_before_marking)
        backlog = await asyncio.gather(
            *(submit(temporal_client, "hello-pass", local()) for _ in range(STARTER_BATCH + 1))
        )
    reset_settings(ODDISH_TEMPORAL_TASK_QUEUE=task_queue)
    assert await unmarked(backlog) == set(backlog)

    key = f"killed-{os.urandom(4).hex()}"
    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": task_queue}
    died = subprocess.run(
        [sys.executable, "-c", KILLED_SUBMITTER, str(EXAMPLES / "hello-pass"), key],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert died.returncode == 9, died.stderr
    task_id = await pending_task_by_key(key)

    # A worker notices the task nobody started once it is older than the lease, and starts it.
    start_worker(ODDISH_SLOT_LEASE_SEC="6")
    started = asyncio.get_running_loop().time()
    await until_started(temporal_client, task_id)
    task = await wait_for_task(temporal_client, task_id, timeout=120)
    print(
        f"unstarted task picked up and finished {asyncio.get_running_loop().time() - started:.1f}s "
        "after a worker came up"
    )
    assert task["status"] == "completed"
    assert [t["status"] for t in task["trials"]] == ["success", "success"]
    assert all(len(t["attempts"]) == 1 for t in task["trials"])
    # The workers asked Temporal about each task of the backlog once and marked it: they will
    # not look at them again.
    assert await unmarked(backlog) == set()


async def test_submission_while_temporal_is_down_is_kept_and_runs_later(
    oddish_env: dict[str, str],
    task_queue: str,
    start_worker,
    work_dir: Path,
    tmp_path: Path,
) -> None:
    server = restartable_temporal_server(tmp_path)
    server.start()
    env = {
        **os.environ,
        **oddish_env,
        "ODDISH_TEMPORAL_TASK_QUEUE": task_queue,
        "ODDISH_TEMPORAL_ADDRESS": server.address,
    }
    api, url = serve_api(env, work_dir / f"api-{task_queue}-down.log", "--no-workers")
    try:
        server.stop()
        archive = task_archive(EXAMPLES / "hello-pass")
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            upload_id = (
                await http.post("/tasks/upload", files={"file": ("t.tar.gz", archive)})
            ).json()["upload_id"]
            sweep = {
                "upload_id": upload_id,
                "configs": [{"n_trials": 2}],
                "harbor": {"environment": "local"},
                "submission_key": f"down-{task_queue}",
            }
            response = await http.post("/tasks/sweep", json=sweep)
            # Accepted, not an error the user would answer by submitting again.
            assert response.status_code == 202, response.text
            task_id = response.json()["id"]
            assert task_id in response.json()["warning"]
            assert "do not submit it again" in response.json()["warning"]
            assert (await http.get(f"/tasks/{task_id}")).json()["status"] == "pending"
            # Sent again all the same (a client retrying its request): the same task, still 202.
            again = await http.post("/tasks/sweep", json=sweep)
            assert again.status_code == 202, again.text
            assert again.json()["id"] == task_id
            # What needs Temporal says it is down, with no 500.
            refused = await http.post(f"/tasks/{task_id}/cancel")
            assert refused.status_code == 503, refused.text
            assert "Temporal cannot be reached" in refused.json()["detail"]

        server.start()
        start_worker(ODDISH_TEMPORAL_ADDRESS=server.address, ODDISH_SLOT_LEASE_SEC="3")
        client = await connect(server.address)
        await until_started(client, task_id)
        task = await wait_for_task(client, task_id, timeout=120)
        assert task["status"] == "completed"
        assert [t["status"] for t in task["trials"]] == ["success", "success"]
    finally:
        api.terminate()
        api.wait(timeout=20)
        server.stop()


async def test_tasks_submitted_side_by_side_are_marked_started_together_shortly_after(
    oddish_env: dict[str, str],
    task_queue: str,
    temporal_client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a task queue no worker serves: the workflows start and stay pending.
    reset_settings(ODDISH_TEMPORAL_TASK_QUEUE=f"{task_queue}-unserved")
    batches: list[list[str]] = []
    mark = records.mark_workflows_started

    async def counted(session: Any, task_ids: Any) -> None:
        batches.append(list(task_ids))
        await mark(session, task_ids)

    try:
        with monkeypatch.context() as patched:
            patched.setattr(records, "mark_workflows_started", counted)
            # Long enough that, even on a slow machine, the twelve go out in the first batch.
            patched.setattr(STARTED_MARKS, "_linger_sec", 2.0)
            # As the API submits: answered without waiting for the mark.
            created = await asyncio.gather(
                *(
                    queue.submit_task(
                        TaskSubmission(task_path=EXAMPLES / "hello-pass", configs=[local()]),
                        client=temporal_client,
                    )
                    for _ in range(12)
                )
            )
            tasks = [task.id for task in created]
            await STARTED_MARKS.flush()
        # Marked, so the workers never ask Temporal about them; side by side, several in one
        # statement rather than one each.
        assert await unmarked(tasks) == set()
        assert set(tasks) <= {t for batch in batches for t in batch}
        assert len(batches) < len(tasks), [len(batch) for batch in batches]

        # A mark the database refuses is logged, not the submission's failure; the marks after
        # it are made again.
        async def refused(*_args: object) -> None:
            raise ConnectionRefusedError("the database is down")

        with monkeypatch.context() as patched:
            patched.setattr(records, "mark_workflows_started", refused)
            unlucky = await submit(temporal_client, "hello-pass", local())
        assert await unmarked([unlucky]) == {unlucky}
        # A library submission returns with its mark written: its event loop may end next.
        later = await submit(temporal_client, "hello-pass", local())
        assert await unmarked([later]) == set()
    finally:
        reset_settings(ODDISH_TEMPORAL_TASK_QUEUE=task_queue)
