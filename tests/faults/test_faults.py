"""Faults against the real stack: a worker killed mid-run, a cancel with trials running and waiting,
the same submission sent twice at once through the REST API.

Each test checks the end state: every trial recorded exactly once (one final attempt, earlier ones
``lost`` or ``infra_error``), the limit never exceeded by the recorded attempt spans, no slot rows
left for the test's queue key, and the task finished as it should.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client, WorkflowFailureError

from helpers import (
    EXAMPLES,
    assert_each_trial_recorded_once,
    attempt_spans,
    attempts_of,
    check_history,
    local,
    max_overlap,
    next_attempt_start,
    parse,
    poll,
    sleeping,
    slot_rows,
    submit,
    task_archive,
    unique_key,
    wait_for_task,
)
from oddish import task_control
from oddish.db.connection import get_session
from oddish.db.models import TaskModel
from oddish.queue import get_task_with_trials
from oddish.workflows import workflow_id_for_task

pytestmark = pytest.mark.timeout(600)


async def test_worker_killed_mid_run_of_30_trials(start_worker, temporal_client: Client) -> None:
    key, limit, n_trials = unique_key("kill30"), 4, 30
    workers = [start_worker("--n-concurrent", json.dumps({key: limit})) for _ in range(2)]
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=n_trials, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "3"}),
    )

    async def mid_run() -> tuple[str, int] | None:
        """(worker identity, trials it runs) once some trials are done and it runs two or more."""
        task = await get_task_with_trials(task_id)
        done = sum(t["status"] == "success" for t in task["trials"])
        running = Counter(
            a["worker"] for t in task["trials"] for a in t["attempts"] if a["status"] == "running"
        )
        busiest = running.most_common(1)
        return busiest[0] if done >= 6 and busiest and busiest[0][1] >= 2 else None

    identity, running_then = await poll(
        mid_run, timeout=120, what="a worker running 2 trials mid-run"
    )
    [victim] = [w for w in workers if identity.endswith(f":{w.process.pid}")]
    killed_at = datetime.now(UTC)
    killed_mono = time.monotonic()
    victim.kill()

    task = await wait_for_task(temporal_client, task_id, timeout=300)
    all_done = time.monotonic() - killed_mono

    assert task["status"] == "completed"
    assert_each_trial_recorded_once(task, n_trials)
    lost = {
        t["index"]: t for t in task["trials"] if any(a["status"] == "lost" for a in t["attempts"])
    }
    assert lost, f"the killed worker ran {running_then} trials; none was recorded lost"
    for trial in lost.values():
        [dead] = [a for a in trial["attempts"] if a["status"] == "lost"]
        assert dead["worker"] == identity and parse(dead["started_at"]) < killed_at
        assert attempts_of(trial)[-1]["worker"] != identity
    # A killed worker's trials run again: the start of each one's next attempt, from the kill.
    again = sorted((next_attempt_start(t) - killed_at).total_seconds() for t in lost.values())
    print(
        f"\nkill -9 of a worker running {len(lost)} of {n_trials} trials: first of its trials "
        f"running again after {again[0]:.1f}s, all of them after {again[-1]:.1f}s; "
        f"task done {all_done:.1f}s after the kill"
    )

    spans = attempt_spans(task, lost_ended_by=killed_at)
    assert max_overlap(spans) == limit, "never more than the limit, and the limit was used"
    assert await slot_rows(key) == 0
    await check_history(temporal_client, task_id, "kill-mid-run")


async def test_cancel_with_trials_running_and_waiting(
    start_worker, temporal_client: Client
) -> None:
    """Two quick trials finish, four long ones run, four wait; then the task is cancelled."""
    key, limit, long_sleep = unique_key("cancel-many"), 4, "67.07"
    start_worker("--n-concurrent", json.dumps({key: limit}))
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=2, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "1"}),
        local(n_trials=8, model=key, agent_env={"ODDISH_SLEEP_SECONDS": long_sleep}),
    )

    async def four_running_four_waiting() -> dict | None:
        task = await get_task_with_trials(task_id)
        counts = Counter(t["status"] for t in task["trials"])
        shape = counts == Counter(success=2, running=4, queued=4)
        return task if shape and sleeping(long_sleep) == 4 else None

    before = await poll(
        four_running_four_waiting, timeout=120, what="2 finished, 4 sandboxes asleep, 4 waiting"
    )
    finished_before = {t["id"]: t for t in before["trials"] if t["status"] == "success"}

    started = time.monotonic()
    assert await task_control.cancel_task(task_id, client=temporal_client) == "cancelling"

    async def sandboxes_gone() -> bool:
        return sleeping(long_sleep) == 0

    await poll(sandboxes_gone, timeout=60, every=0.05, what="no sandbox left")
    no_sandbox = time.monotonic() - started
    handle = temporal_client.get_workflow_handle(workflow_id_for_task(task_id))
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 60)
    closed = time.monotonic() - started
    print(
        f"\ncancel of 4 running + 4 waiting trials: no sandbox left after {no_sandbox:.2f}s, "
        f"workflow closed after {closed:.2f}s"
    )

    # A cancel reaches a trial in the answer to a heartbeat, sent at least every 2 s.
    assert no_sandbox < 10, "the running trials' sandboxes went within seconds"

    task = await get_task_with_trials(task_id)
    assert task["status"] == "cancelled"
    for trial in task["trials"]:
        if trial["id"] in finished_before:
            old = finished_before[trial["id"]]
            for field in ("status", "outcome", "reward", "finished_at", "attempts"):
                assert trial[field] == old[field], (
                    f"finished trial {trial['index']}: {field} changed"
                )
        else:
            assert trial["status"] == "cancelled" and trial["outcome"] == "cancelled"
            assert trial["reward"] is None
    attempts = Counter(a["status"] for t in task["trials"] for a in t["attempts"])
    assert attempts == Counter(success=2, cancelled=4), "one attempt per trial that ran; none after"
    assert max_overlap(attempt_spans(task)) == limit
    assert await slot_rows(key) == 0, "running and waiting trials gave their slots back"
    await check_history(temporal_client, task_id, "cancel-running-and-waiting")


async def test_same_sweep_posted_twice_at_once_makes_one_task(
    api: str,
    start_worker,
    temporal_client: Client,
) -> None:
    """The library path is in test_inputs; here two HTTP requests race inside one API process."""
    start_worker()
    submission_key = f"sweep-twice-{time.monotonic_ns()}"
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        archive = task_archive(EXAMPLES / "hello-pass")
        upload_id = (
            await http.post("/tasks/upload", files={"file": ("t.tar.gz", archive)})
        ).json()["upload_id"]
        body = {
            "upload_id": upload_id,
            "configs": [{"agent": "oracle", "n_trials": 3}],
            "harbor": {"environment": "local"},
            "submission_key": submission_key,
        }
        first, second = await asyncio.gather(
            http.post("/tasks/sweep", json=body), http.post("/tasks/sweep", json=body)
        )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json() == second.json()
    task_id = first.json()["id"]

    task = await wait_for_task(temporal_client, task_id)
    assert task["status"] == "completed"
    assert_each_trial_recorded_once(task, 3)
    assert all(len(t["attempts"]) == 1 for t in task["trials"])
    async with get_session() as session:
        count = await session.execute(
            select(func.count())
            .select_from(TaskModel)
            .where(TaskModel.submission_key == submission_key)
        )
        assert count.scalar_one() == 1
    runs = [
        w
        async for w in temporal_client.list_workflows(
            f'WorkflowId = "{workflow_id_for_task(task_id)}"'
        )
    ]
    assert len(runs) == 1, "one workflow run"
