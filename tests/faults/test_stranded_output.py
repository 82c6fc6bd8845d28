"""A worker killed (kill -9) while the storage is down, its trials' results recorded but their
outputs not uploaded yet: nothing is lost. Once the storage is back and a worker starts again on
the same machine (the same directories), it uploads the outputs its previous life left on the
disk and removes them there (``oddish.worker.output_sweep``); the task completes and no trial
runs again.

Without that sweep nothing would upload them: the records already point at the storage, and the
trial's activity, retried on the new worker, finds its result recorded and returns it.

The storage is moto's S3 server behind a TCP proxy (as in test_storage_outage): stopping the
proxy is the outage as the worker sees it, while this process talks to moto directly.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
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
    stored_keys,
    uploads_logged,
)
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(300)

N_TRIALS = 3
# The agents sleep this long: long enough for all of them to be asleep at once on a slow
# machine. A fraction of this run's own, so that pgrep counts its agents and no others.
AGENT_SLEEP = f"7.{secrets.randbelow(900) + 100}"
# The worker is killed once every output's upload failed this often (so it was in the middle of
# trying again, the storage down).
MIN_FAILED_TRIES = 2


async def test_outputs_stranded_by_a_worker_killed_while_storage_is_down_are_stored_later(
    s3_server: S3Server,
    s3_env: dict[str, str],
    proxy: TcpProxy,
    start_worker,
    temporal_client: Client,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    bucket, prefix = s3_env["ODDISH_S3_BUCKET"], s3_env["ODDISH_S3_PREFIX"]
    # The worker's machine: its directories outlive the worker, and the next worker uses them.
    machine = tmp_path / "worker-machine"
    jobs_dir = machine / "harbor-jobs"
    machine_env = {
        **s3_env,
        "ODDISH_S3_ENDPOINT_URL": proxy.url,
        "ODDISH_TASKS_DIR": str(machine / "tasks"),
        "ODDISH_TASK_CACHE_DIR": str(machine / "task-cache"),
        "ODDISH_HARBOR_JOBS_DIR": str(jobs_dir),
        "ODDISH_HOME": str(machine / "home"),
    }
    first = start_worker(**machine_env)
    task_id = await submit(
        temporal_client,
        "sleep",
        local(
            n_trials=N_TRIALS,
            model=unique_key("stranded-output"),
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

    # The trials finish meanwhile; their results are recorded, their outputs not uploaded.
    async def all_recorded() -> dict | None:
        task = await get_task_with_trials(task_id)
        done = all(t["status"] in TERMINAL_JOB_STATUSES for t in task["trials"])
        return task if done else None

    recorded = await poll(all_recorded, timeout=90, every=0.2, what="every result recorded")
    locations = {t["id"]: trial_output_prefix(task_id, t["id"], 1) for t in recorded["trials"]}
    for trial in recorded["trials"]:
        assert (trial["status"], trial["reward"]) == ("success", 1.0), trial
        assert [(a["number"], a["status"]) for a in trial["attempts"]] == [(1, "success")], trial
        # The record points at the storage already.
        assert trial["harbor_trial_dir"] == locations[trial["id"]], trial

    # The worker is trying again and again to upload them when it dies.
    async def uploads_failing() -> bool:
        log = first.log()
        return all(
            failed_tries(log, location) >= MIN_FAILED_TRIES for location in locations.values()
        )

    await poll(uploads_failing, timeout=60, every=0.2, what="every upload failed and retried")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    first.kill()  # kill -9 of the worker and its process group: no cleanup of any kind
    killed_at = time.monotonic()
    assert first.process.returncode == -9, first.process.returncode
    assert not [line for line in first.log().splitlines() if "stored:" in line], uploads_logged(
        first.log()
    )

    # What it leaves: each attempt's output on the disk, none of it in the storage.
    for trial_id in locations:
        attempt_dir = jobs_dir / task_id / trial_id / "attempt-1"
        assert (attempt_dir / "result.json").is_file(), sorted(jobs_dir.rglob("*"))
    assert sorted(p.name for p in jobs_dir.rglob("attempt-*")) == ["attempt-1"] * N_TRIALS
    assert stored_keys(s3_server, bucket, outputs_prefix) == set()

    # The storage is back, and a worker starts again on the same machine.
    proxy.start()
    second = start_worker(**machine_env)
    restarted_at = time.monotonic()

    # It stores what the killed worker left, and removes it from the disk.
    wanted = {f"{trial_id}/attempt-1/result.json" for trial_id in locations}

    async def all_stored() -> bool:
        keys = stored_keys(s3_server, bucket, outputs_prefix)
        return wanted <= keys and not list(jobs_dir.rglob("attempt-*"))

    try:
        await poll(all_stored, timeout=60, every=0.5, what="the stranded outputs stored")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nin the bucket: {sorted(stored_keys(s3_server, bucket, outputs_prefix))}\n"
            f"on the disk: {sorted(map(str, jobs_dir.rglob('attempt-*')))}\n"
            f"new worker's log:\n{uploads_logged(second.log())}"
        ) from None
    stored_at = time.monotonic()

    task = await wait_for_task(temporal_client, task_id, timeout=90)
    done_at = time.monotonic()
    assert task["status"] == "completed", task
    assert len(task["trials"]) == N_TRIALS
    assert_each_output_stored_once(task, locations, s3_server, bucket, prefix, jobs_dir)
    assert agents_asleep(AGENT_SLEEP) == 0

    # The new worker said so: each output found on the disk, and stored.
    log = second.log()
    for location in locations.values():
        assert f"output of {location} was left on this disk; storing it now" in log, log
        assert f"output of {location} stored:" in log, log
        assert failed_tries(log, location) == 0, log
    assert f"stored {N_TRIALS} attempt outputs left on this disk" in log, log
    print(
        f"\nkilled {killed_at - began:.1f}s into the test; outputs stored "
        f"{stored_at - restarted_at:.1f}s after the new worker started; task done "
        f"{done_at - restarted_at:.1f}s after it started; {time.monotonic() - began:.1f}s in all"
    )
