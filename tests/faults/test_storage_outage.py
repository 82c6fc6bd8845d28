"""Storage unreachable when trials finish: each result is recorded all the same, the output stays
on the worker and is uploaded (retrying with backoff, the activity heartbeating meanwhile) once
the storage is back; nothing is lost and no trial runs again.

The storage is moto's S3 server behind a TCP proxy on 127.0.0.1. Stopping the proxy is the
outage as the worker sees it (connections cut, then refused) while moto keeps the bucket and the
task's archive; starting it again on the same port ends the outage. The worker reaches the
storage through the proxy only; this process (the submitter, and the test's own checks) talks
to moto directly.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus

from helpers import local, poll, submit, unique_key, wait_for_task
from oddish.queue import get_task_with_trials
from oddish.statuses import TERMINAL_JOB_STATUSES
from oddish.storage import trial_output_prefix
from oddish.workflows import workflow_id_for_task
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (the fixture)
from storage_faults import (  # noqa: F401  (the fixtures)
    agents_asleep,
    assert_each_output_stored_once,
    failed_tries,
    proxy_fixture,
    s3_env_fixture,
    stored,
    uploads_logged,
)
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(300)

N_TRIALS = 3
# The agents sleep this long: long enough for all of them to be asleep at once on a slow
# machine. A fraction of this run's own, so that pgrep counts its agents and no others.
AGENT_SLEEP = f"9.{secrets.randbelow(900) + 100}"
# The outage goes on this long after the last result is recorded: over twice the trials'
# heartbeat timeout (6 s in the tests), and several rounds of the upload's backoff (1, 2, 4 s).
DOWN_AFTER_RESULTS_SEC = 14
# ... and at least until every output's upload failed this often (so was tried again).
MIN_FAILED_TRIES = 3


async def test_outputs_of_trials_finishing_while_storage_is_down_are_kept_and_uploaded(
    oddish_env: dict[str, str],
    s3_server: S3Server,
    s3_env: dict[str, str],
    proxy: TcpProxy,
    start_worker,
    temporal_client: Client,
    tmp_path: Path,
) -> None:
    bucket, prefix = s3_env["ODDISH_S3_BUCKET"], s3_env["ODDISH_S3_PREFIX"]
    machine = tmp_path / "worker-machine"
    jobs_dir = machine / "harbor-jobs"
    worker = start_worker(
        **{**s3_env, "ODDISH_S3_ENDPOINT_URL": proxy.url},
        ODDISH_TASKS_DIR=str(machine / "tasks"),
        ODDISH_TASK_CACHE_DIR=str(machine / "task-cache"),
        ODDISH_HARBOR_JOBS_DIR=str(jobs_dir),
        ODDISH_HOME=str(machine / "home"),
    )
    task_id = await submit(
        temporal_client,
        "sleep",
        local(
            n_trials=N_TRIALS,
            model=unique_key("storage-outage"),
            agent_env={"ODDISH_SLEEP_SECONDS": AGENT_SLEEP},
        ),
        run_analysis=False,
    )
    handle = temporal_client.get_workflow_handle(workflow_id_for_task(task_id))
    outputs_prefix = f"{prefix}tasks/{task_id}/trials/"

    # Every agent runs (so the worker has fetched the task's archive): the storage goes down.
    async def all_asleep() -> bool:
        return agents_asleep(AGENT_SLEEP) == N_TRIALS

    await poll(all_asleep, timeout=120, every=0.1, what=f"{N_TRIALS} agents asleep")
    proxy.stop()
    down_at = time.monotonic()

    # The trials finish meanwhile, and their results are recorded while the storage is down.
    async def all_recorded() -> dict | None:
        task = await get_task_with_trials(task_id)
        done = all(t["status"] in TERMINAL_JOB_STATUSES for t in task["trials"])
        return task if done else None

    recorded = await poll(all_recorded, timeout=90, every=0.2, what="every result recorded")
    results_at = time.monotonic()
    assert not proxy.running
    locations = {t["id"]: trial_output_prefix(task_id, t["id"], 1) for t in recorded["trials"]}
    for trial in recorded["trials"]:
        assert (trial["status"], trial["reward"]) == ("success", 1.0), trial
        assert [(a["number"], a["status"]) for a in trial["attempts"]] == [(1, "success")], trial
        # The record says where the output goes: storage, not the worker's disk.
        assert trial["harbor_trial_dir"] == locations[trial["id"]]
        # ... which holds none of it yet: the output waits on the worker's disk.
        local_copy = jobs_dir / task_id / trial["id"] / "attempt-1"
        assert (local_copy / "result.json").is_file(), sorted(jobs_dir.rglob("*"))
    assert stored(s3_server, bucket, outputs_prefix) == {}
    # The task is not done: each trial's activity runs until its output is stored.
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    # The outage goes on: over twice the heartbeat timeout, and until every upload failed a few
    # times (each time tried again). The task must not finish meanwhile: its outputs are not
    # stored yet.
    async def retried_long_enough() -> bool:
        status = (await handle.describe()).status
        assert status == WorkflowExecutionStatus.RUNNING, (
            f"the task ended ({status.name if status else status}) while the storage was down:\n"
            + uploads_logged(worker.log())
        )
        log = worker.log()
        return time.monotonic() - results_at >= DOWN_AFTER_RESULTS_SEC and all(
            failed_tries(log, location) >= MIN_FAILED_TRIES for location in locations.values()
        )

    await poll(retried_long_enough, timeout=90, every=0.5, what="uploads retried while down")
    # Still running, the same (first) attempt of each trial's activity, heartbeating lately.
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    pending = [
        a
        for a in description.raw_description.pending_activities
        if a.activity_type.name == "run_trial"
    ]
    assert len(pending) == N_TRIALS, pending
    heartbeat_timeout = float(oddish_env["ODDISH_TRIAL_HEARTBEAT_TIMEOUT_SEC"])
    for activity in pending:
        state = PendingActivityState.Name(activity.state)
        assert (activity.attempt, state) == (1, "PENDING_ACTIVITY_STATE_STARTED"), (
            f"trial activity {activity.activity_id}: attempt {activity.attempt}, {state}, "
            f"last failure: {activity.last_failure.message!r}"
        )
        silent = time.time() - activity.last_heartbeat_time.ToMicroseconds() / 1e6
        assert silent < heartbeat_timeout, f"no heartbeat for {silent:.1f}s: {activity}"
    assert stored(s3_server, bucket, outputs_prefix) == {}
    assert all((jobs_dir / task_id / trial_id / "attempt-1").is_dir() for trial_id in locations)

    # The storage is back on the same address: the outputs go up, and the task completes.
    proxy.start()
    back_at = time.monotonic()
    task = await wait_for_task(temporal_client, task_id, timeout=90)
    done_at = time.monotonic()

    assert task["status"] == "completed", task
    assert len(task["trials"]) == N_TRIALS
    assert_each_output_stored_once(task, locations, s3_server, bucket, prefix, jobs_dir)

    # Each trial's activity ran once, its first attempt completing: no heartbeat timed out.
    history = await handle.fetch_history()
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled.count("run_trial") == N_TRIALS, scheduled
    assert started == [1] * len(scheduled), started
    assert not [
        e.event_type
        for e in history.events
        if e.event_type
        in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        )
    ]

    # The worker said so: each output stored after tries that failed while the storage was down.
    log = worker.log()
    for location in locations.values():
        assert failed_tries(log, location) >= MIN_FAILED_TRIES, log
        assert f"output of {location} stored:" in log, log
    print(
        f"\nstorage down {back_at - down_at:.1f}s ({back_at - results_at:.1f}s after the last "
        f"result was recorded); failed uploads per trial "
        f"{[failed_tries(log, location) for location in locations.values()]}; task done "
        f"{done_at - back_at:.1f}s after the storage came back"
    )
