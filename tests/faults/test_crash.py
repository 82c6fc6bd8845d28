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
    local,
    slot_rows,
    submit,
    unique_key,
    wait_for_task,
    wait_until_running,
)

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
