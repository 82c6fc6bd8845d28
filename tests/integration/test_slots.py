"""The slot table's invariants, observed through real workers and real Harbor trials."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import datetime

import pytest
from temporalio.client import Client, WorkflowFailureError

from helpers import (
    check_history,
    intervals,
    local,
    max_overlap,
    sleeping_sandboxes,
    slot_rows,
    submit,
    unique_key,
    wait_for_task,
    wait_until_running,
)
from oddish.activities.heartbeat import MAX_INTERVAL_SEC as MAX_HEARTBEAT_INTERVAL_SEC
from oddish.queue import get_task_with_trials, set_queue_limit

pytestmark = pytest.mark.timeout(600)


async def test_limit_holds_across_two_workers_and_other_keys_run(
    start_worker, temporal_client: Client
) -> None:
    limited, other = unique_key("limited"), unique_key("other")
    limits = json.dumps({limited: 2, other: 4})
    start_worker("--n-concurrent", limits)
    start_worker("--n-concurrent", limits)
    sleep = {"ODDISH_SLEEP_SECONDS": "1"}
    # Ten tasks: a task's trials may all run in the slot lanes of one worker's activities, and
    # ten tasks' lanes go to both workers (all ten to one had odds of about 1 in 500).
    limited_tasks = [
        await submit(temporal_client, "sleep", local(n_trials=2, model=limited, agent_env=sleep))
        for _ in range(10)
    ]
    other_task = await submit(
        temporal_client, "sleep", local(n_trials=8, model=other, agent_env=sleep)
    )
    *firsts, second = await asyncio.gather(
        *(wait_for_task(temporal_client, t) for t in limited_tasks),
        wait_for_task(temporal_client, other_task),
    )
    limited_trials = [t for task in firsts for t in task["trials"]]

    assert all(t["status"] == "success" and t["reward"] == 1.0 for t in limited_trials)
    spans = intervals({"trials": limited_trials})
    assert max_overlap(spans) == 2, "never more than the limit, and the limit is used"
    workers = {t["attempts"][0]["worker"] for t in limited_trials}
    assert len(workers) == 2, "both worker processes ran trials of the limited key"

    # The limited key at its limit did not hold the other key back.
    window_start, window_end = min(s for s, _ in spans), max(e for _, e in spans)
    other_spans = intervals(second)
    assert sum(1 for s, e in other_spans if s < window_end and e > window_start) >= 4
    assert max_overlap(other_spans) <= 4
    assert await slot_rows(limited) == 0 and await slot_rows(other) == 0


async def test_priority_first_then_fifo_and_freed_slot_goes_promptly(
    start_worker, temporal_client: Client
) -> None:
    key = unique_key("prio")
    # A long fallback poll: grants must come from NOTIFY, not from polling.
    start_worker("--n-concurrent", json.dumps({key: 1}), ODDISH_DISPATCHER_POLL_INTERVAL_SEC="60")
    sleep = {"ODDISH_SLEEP_SECONDS": "2"}
    low = await submit(
        temporal_client, "sleep", local(n_trials=3, model=key, agent_env=sleep), priority=0
    )
    await wait_until_running(low)
    high = await submit(
        temporal_client, "sleep", local(n_trials=1, model=key, agent_env=sleep), priority=10
    )
    low_task, high_task = await asyncio.gather(
        wait_for_task(temporal_client, low), wait_for_task(temporal_client, high)
    )

    low_starts = sorted(datetime.fromisoformat(t["started_at"]) for t in low_task["trials"])
    high_start = datetime.fromisoformat(high_task["trials"][0]["started_at"])
    assert low_starts[0] < high_start < low_starts[1], "the later high-priority trial went next"
    # FIFO within a priority: low trials started in index order.
    by_index = [datetime.fromisoformat(t["started_at"]) for t in low_task["trials"]]
    assert by_index == sorted(by_index)

    spans = sorted(intervals(low_task) + intervals(high_task))
    assert max_overlap(spans) == 1
    gaps = [(spans[i + 1][0] - spans[i][1]).total_seconds() for i in range(len(spans) - 1)]
    print(f"slot hand-over gaps (s): {[round(g, 3) for g in gaps]}")
    assert max(gaps) < 2.0, "a freed slot went to the next trial without waiting for a poll"


async def test_limit_changes_at_run_time_without_restart(
    start_worker, temporal_client: Client
) -> None:
    key = unique_key("runtime")
    start_worker("--n-concurrent", json.dumps({key: 1}))
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=8, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "2"}),
    )
    await wait_until_running(task_id)
    raised_at = datetime.now().astimezone()
    await set_queue_limit(key, 3)
    task = await wait_for_task(temporal_client, task_id)

    spans = intervals(task)
    before = [s for s in spans if s[0] < raised_at]
    assert max_overlap(before) == 1
    assert max_overlap(spans) == 3


async def test_terminated_workflow_gives_its_slots_back(
    start_worker, temporal_client: Client
) -> None:
    key, lease, poll = unique_key("terminated"), 3.0, 2.0
    start_worker(
        "--n-concurrent",
        json.dumps({key: 1}),
        ODDISH_SLOT_LEASE_SEC=str(lease),
        ODDISH_DISPATCHER_POLL_INTERVAL_SEC=str(poll),
    )
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=3, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "60.06"}),
    )
    await wait_until_running(task_id)
    for _ in range(300):
        if sleeping_sandboxes("60.06"):
            break
        await asyncio.sleep(0.1)
    assert sleeping_sandboxes("60.06"), "the running trial's agent is asleep in its sandbox"
    assert await slot_rows(key) == 3
    terminated = time.monotonic()
    await temporal_client.get_workflow_handle(f"task/{task_id}").terminate("operator says stop")
    sandbox_gone = slots_back = None
    for _ in range(400):
        if sandbox_gone is None and not sleeping_sandboxes("60.06"):
            sandbox_gone = time.monotonic() - terminated
        task = await get_task_with_trials(task_id)
        if await slot_rows(key) == 0 and task["status"] == "cancelled":
            slots_back = time.monotonic() - terminated
            break
        await asyncio.sleep(0.1)
    assert await slot_rows(key) == 0, "the holder and the waiting rows were given back"
    print(
        f"\nterminated workflow: sandbox gone after {sandbox_gone:.1f}s, its slots back after "
        f"{slots_back:.1f}s (lease {lease:.0f}s, dispatcher poll {poll:.0f}s)"
    )
    # The trial learns its workflow is gone from its next heartbeat (at most 2 s) and stops; its
    # slot row, untouched from then on, is reaped once the lease runs out, at the dispatcher's
    # next round.
    assert slots_back < lease + poll + MAX_HEARTBEAT_INTERVAL_SEC + 5
    assert task["status"] == "cancelled"
    assert {t["status"] for t in task["trials"]} == {"cancelled"}
    assert all(a["status"] != "running" for t in task["trials"] for a in t["attempts"])


async def test_cancelled_workflow_stops_its_sandbox_and_settles_records(
    start_worker, temporal_client: Client
) -> None:
    key = unique_key("cancel")
    start_worker("--n-concurrent", json.dumps({key: 1}))
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=3, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "61"}),
    )
    await wait_until_running(task_id)
    await asyncio.sleep(1)
    handle = temporal_client.get_workflow_handle(f"task/{task_id}")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 60)

    task = await get_task_with_trials(task_id)
    assert task["status"] == "cancelled"
    assert {t["status"] for t in task["trials"]} == {"cancelled"}
    assert [a["status"] for t in task["trials"] for a in t["attempts"]] == ["cancelled"]
    assert await slot_rows(key) == 0
    leftover = subprocess.run(["pgrep", "-af", "^sleep 61$"], capture_output=True, text=True).stdout
    assert leftover == "", "the running trial's sandbox was torn down"
    await check_history(temporal_client, task_id, "cancelled")
