"""kill -9 of the worker running a trial: the trial finishes elsewhere, once, and its slot comes
back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
from temporalio.client import Client

from helpers import (
    check_history,
    intervals,
    local,
    max_overlap,
    poll,
    slot_rows,
    submit,
    unique_key,
    wait_for_task,
    wait_until_running,
)
from oddish.queue import get_task_with_trials

pytestmark = pytest.mark.timeout(600)


def sleeping_agents() -> str:
    return subprocess.run(
        ["pgrep", "-af", "^sleep 8\\.03$"], capture_output=True, text=True
    ).stdout.strip()


async def test_killed_worker_trial_finishes_on_the_other_once(
    start_worker, temporal_client: Client
) -> None:
    key = unique_key("crash")
    limits = json.dumps({key: 1})
    workers = [start_worker("--n-concurrent", limits), start_worker("--n-concurrent", limits)]
    task_id = await submit(
        temporal_client, "sleep", local(model=key, agent_env={"ODDISH_SLEEP_SECONDS": "8.03"})
    )

    running = (await wait_until_running(task_id))["trials"][0]["attempts"][0]
    await asyncio.sleep(2)  # well inside the agent's sleep
    pid = int(running["worker"].rsplit(":", 1)[1])
    [victim] = [w for w in workers if w.process.pid == pid]
    [survivor] = [w for w in workers if w is not victim]
    killed_at = time.monotonic()
    assert sleeping_agents(), "the agent is asleep in its sandbox"
    victim.kill()
    # Before the other worker takes over (heartbeat timeout), the sandbox died with its worker.
    await asyncio.sleep(1.5)
    assert sleeping_agents() == ""

    task = await wait_for_task(temporal_client, task_id)
    recovered_after = time.monotonic() - killed_at
    print(f"killed worker -> trial finished on the other after {recovered_after:.1f}s")

    [trial] = task["trials"]
    assert task["status"] == "completed"
    assert trial["status"] == "success" and trial["reward"] == 1.0
    assert [a["status"] for a in trial["attempts"]] == ["lost", "success"]
    assert trial["attempts"][1]["worker"].endswith(f":{survivor.process.pid}")
    assert trial["analysis"]["classification"] == "success"
    assert await slot_rows(key) == 0, "the slot came back without anyone acting"
    await check_history(temporal_client, task_id, "worker-killed")


async def test_worker_stopped_mid_trial_hands_the_trial_over(
    start_worker, temporal_client: Client
) -> None:
    """A rolling restart (SIGTERM) does not settle a running trial as cancelled: it runs again."""
    key = unique_key("restart")
    limits = json.dumps({key: 1})
    workers = [start_worker("--n-concurrent", limits), start_worker("--n-concurrent", limits)]
    task_id = await submit(
        temporal_client, "sleep", local(model=key, agent_env={"ODDISH_SLEEP_SECONDS": "8.03"})
    )
    running = (await wait_until_running(task_id))["trials"][0]["attempts"][0]
    pid = int(running["worker"].rsplit(":", 1)[1])
    [stopping] = [w for w in workers if w.process.pid == pid]
    stopping.stop()

    task = await wait_for_task(temporal_client, task_id)
    [trial] = task["trials"]
    assert trial["status"] == "success" and trial["reward"] == 1.0
    assert trial["attempts"][-1]["status"] == "success"
    assert trial["attempts"][-1]["worker"] != running["worker"]
    assert await slot_rows(key) == 0


async def test_killed_lane_goes_on_from_the_trial_it_was_running(
    start_worker, temporal_client: Client
) -> None:
    """A slot lane (one activity running trial after trial on a slot) whose worker is killed
    mid-lane: Temporal's next attempt of the activity learns from the records which trials the
    lane ran and which one it was running, and goes on from that one. Each trial runs to one
    result, the finished ones are not run again, and the slot is used by one trial at a time."""
    key = unique_key("lane-crash")
    limits = json.dumps({key: 1})
    workers = [start_worker("--n-concurrent", limits), start_worker("--n-concurrent", limits)]
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=3, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "4.01"}),
    )

    async def second_running() -> dict | None:
        task = await get_task_with_trials(task_id)
        second = task["trials"][1]
        return second if second["status"] == "running" else None

    second = await poll(second_running, timeout=120, what="the lane's second trial running")
    await asyncio.sleep(1)
    pid = int(second["attempts"][0]["worker"].rsplit(":", 1)[1])
    [victim] = [w for w in workers if w.process.pid == pid]
    [survivor] = [w for w in workers if w is not victim]
    victim.kill()

    task = await wait_for_task(temporal_client, task_id, timeout=300)
    assert task["status"] == "completed"
    first, second, third = task["trials"]
    assert [a["status"] for a in first["attempts"]] == ["success"]
    assert [a["status"] for a in second["attempts"]] == ["lost", "success"]
    assert second["attempts"][1]["worker"].endswith(f":{survivor.process.pid}")
    assert [a["status"] for a in third["attempts"]] == ["success"]
    assert max_overlap(intervals(task)) == 1
    history = await temporal_client.get_workflow_handle(f"task/{task_id}").fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled.count("run_trial") == 1, "the lane went on in its activity's next attempt"
    assert await slot_rows(key) == 0
    await check_history(temporal_client, task_id, "slot-lanes-worker-killed")
