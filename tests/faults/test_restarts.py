"""The services restarted under a running task: the Temporal server, then Postgres.

Each restart happens mid-run, with trials running and others waiting for slots, and keeps the
service down for a while. The task must complete, every trial recorded exactly once, the limit
held, and no slot row left.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from helpers import (
    assert_each_trial_recorded_once,
    attempt_spans,
    check_history,
    local,
    max_overlap,
    parse,
    poll,
    reset_settings,
    restartable_temporal_server,
    sleeping,
    slot_rows,
    submit,
    unique_key,
)
from oddish.config import get_settings
from oddish.queue import get_task_with_trials
from oddish.temporal_gateway import connect
from oddish.workflows import workflow_id_for_task

pytestmark = pytest.mark.timeout(600)

OUTAGE_SEC = 10.0
N_TRIALS, LIMIT = 16, 4
# Two long trials run across the outage (they start first: FIFO); the short ones finish in it,
# before it and after it.
N_LONG, LONG_SEC = 2, 25.05


async def submit_mixed(client: Client, key: str) -> str:
    return await submit(
        client,
        "sleep",
        local(n_trials=N_LONG, model=key, agent_env={"ODDISH_SLEEP_SECONDS": str(LONG_SEC)}),
        local(n_trials=N_TRIALS - N_LONG, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "3"}),
    )


class SandboxWatch:
    """Counts the long trials' sandboxes every quarter second: a trial never runs twice at once."""

    def __init__(self) -> None:
        self.peak = 0
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            self.peak = max(self.peak, await asyncio.to_thread(sleeping, LONG_SEC))
            await asyncio.sleep(0.25)

    def stop(self) -> int:
        self._task.cancel()
        return self.peak


async def read_task(task_id: str) -> dict | None:
    """The task, or None while the database cannot be reached."""
    try:
        return await get_task_with_trials(task_id)
    except Exception:
        return None


async def mid_run(task_id: str) -> dict:
    """The task once some trials have finished, every slot is busy, others wait, and the short
    trials running have just started (so they finish during the outage, not before it)."""

    async def there() -> dict | None:
        task = await read_task(task_id)
        if task is None:
            return None
        counts = Counter(t["status"] for t in task["trials"])
        now = datetime.now(UTC)
        fresh = all(
            (now - parse(t["attempts"][-1]["started_at"])).total_seconds() < 1.0
            for t in task["trials"]
            if t["status"] == "running" and t["index"] >= N_LONG
        )
        busy = counts["success"] >= LIMIT and counts["running"] == LIMIT and counts["queued"] > 0
        return task if busy and fresh else None

    return await poll(
        there, timeout=120, every=0.1, what="every slot busy, short trials just started"
    )


async def wait_for_result(client: Client, task_id: str, timeout: float) -> list[str]:
    """Wait for the workflow's result through outages; returns the errors the client saw."""
    handle = client.get_workflow_handle(workflow_id_for_task(task_id))
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    while True:
        try:
            await asyncio.wait_for(handle.result(), max(1.0, deadline - time.monotonic()))
            return errors
        except RPCError as exc:
            errors.append(f"{exc.status.name}: {exc.message[:80]}")
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def starts_after(task: dict, moment: datetime) -> list[float]:
    """Seconds from ``moment`` to each attempt started after it."""
    return sorted(
        (parse(a["started_at"]) - moment).total_seconds()
        for t in task["trials"]
        for a in t["attempts"]
        if parse(a["started_at"]) > moment
    )


def check_end_state(
    task: dict, key_rows: int, *, stopped_at: datetime, restarted_at: datetime, sandbox_peak: int
) -> None:
    assert task["status"] == "completed", task["status"]
    assert_each_trial_recorded_once(task, N_TRIALS)
    # The outage cost no trial its work: nothing was lost or ran again.
    assert all(len(t["attempts"]) == 1 for t in task["trials"]), [
        [a["status"] for a in t["attempts"]] for t in task["trials"] if len(t["attempts"]) > 1
    ]
    across = [
        t
        for t in task["trials"]
        if parse(t["attempts"][0]["started_at"]) < stopped_at
        and parse(t["attempts"][0]["finished_at"]) > restarted_at
    ]
    assert len(across) >= N_LONG, "the long trials ran across the outage"
    assert sandbox_peak == N_LONG, "no trial ran twice at once"
    assert max_overlap(attempt_spans(task)) == LIMIT
    assert key_rows == 0, "no slot row left"
    assert parse(task["finished_at"]) > restarted_at


@pytest.fixture(params=[3, 1], ids=["3-attempts", "1-attempt"])
def trial_max_attempts(request: pytest.FixtureRequest) -> Iterator[int]:
    """With one attempt, the attempt Temporal gives up on in the outage is the trial's last: the
    trial still must not be failed while that attempt carries on."""
    reset_settings(ODDISH_TRIAL_MAX_ATTEMPTS=str(request.param))
    yield request.param
    os.environ.pop("ODDISH_TRIAL_MAX_ATTEMPTS")
    get_settings.cache_clear()


async def test_temporal_server_restarted_mid_run(
    start_worker, migrated: None, tmp_path: Path, trial_max_attempts: int
) -> None:
    server = restartable_temporal_server(tmp_path)
    server.start()
    watch = SandboxWatch()
    try:
        client = await connect(server.address)
        key = unique_key("temporal-restart")
        worker = start_worker(
            "--n-concurrent", json.dumps({key: LIMIT}), ODDISH_TEMPORAL_ADDRESS=server.address
        )
        task_id = await submit_mixed(client, key)
        before = await mid_run(task_id)
        done_before = {t["id"] for t in before["trials"] if t["status"] == "success"}

        server.stop()
        stopped_at = datetime.now(UTC)
        await asyncio.sleep(OUTAGE_SEC)  # the outage itself: nothing to wait for but time
        during = await get_task_with_trials(task_id)
        server.start()
        restarted_at = datetime.now(UTC)
        restarted = time.monotonic()

        client_errors = await wait_for_result(client, task_id, timeout=240)
        all_done = time.monotonic() - restarted
        task = await get_task_with_trials(task_id)
        finished_in_outage = [
            t for t in during["trials"] if t["status"] == "success" and t["id"] not in done_before
        ]
        started = starts_after(task, restarted_at)
        log = worker.log()
        print(
            f"\nTemporal down {OUTAGE_SEC:.0f}s: {len(finished_in_outage)} trials finished and "
            f"were recorded meanwhile; after the restart trials started at "
            f"{[round(x, 1) for x in started]}s; task done {all_done:.1f}s after the restart; "
            "grants the dispatcher could not signal in the outage: "
            f"{log.count('could not signal')}; "
            f"trials carried on through it: {log.count('carries on')} (at most "
            f"{trial_max_attempts} attempts each); errors the client "
            f"saw: {len(client_errors)}"
        )
        assert worker.process.poll() is None, "the worker lived through the outage"
        check_end_state(
            task,
            await slot_rows(key),
            stopped_at=stopped_at,
            restarted_at=restarted_at,
            sandbox_peak=watch.stop(),
        )
        await check_history(client, task_id, "temporal-restart")
    finally:
        watch.stop()
        server.stop()


def pg_ctl_runner(data_dir: Path):
    """pg_ctl of the pgserver wheel, run as the user pgserver runs Postgres as."""
    from pgserver._commands import POSTGRES_BIN_PATH

    kwargs = {"user": "pgserver"} if os.geteuid() == 0 else {}

    def pg_ctl(*args: str) -> None:
        done = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), "-w", *args],
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )
        assert done.returncode == 0, f"pg_ctl {' '.join(args)}: {done.stdout}{done.stderr}"

    return pg_ctl


def restart_options(data_dir: Path) -> list[str]:
    """pgserver's start options of the running server (unix socket dir and port, no TCP)."""
    lines = (data_dir / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return [
        "-o",
        '-h ""',
        "-o",
        f"-k {socket_dir}",
        "-o",
        f"-p {port}",
        "-l",
        str(data_dir / "log"),
    ]


def refresh_pgserver_handle(data_dir: Path) -> None:
    """pgserver stops its server at exit only if it is the process it started: point its
    handle at the restarted one."""
    from pgserver import PostgresServer
    from pgserver.utils import PostmasterInfo

    server = PostgresServer._instances.get(data_dir.resolve())
    if server is not None:
        server._postmaster_info = PostmasterInfo.read_from_pgdata(data_dir.resolve())


async def test_postgres_restarted_mid_run(
    start_worker, temporal_client: Client, work_dir: Path
) -> None:
    data_dir = work_dir / "pg"
    if not (data_dir / "PG_VERSION").exists():
        pytest.skip(
            "Postgres is $DATABASE_URL's server, not the embedded one this test can restart"
        )
    pg_ctl = pg_ctl_runner(data_dir)
    options = restart_options(data_dir)
    key = unique_key("pg-restart")
    worker = start_worker("--n-concurrent", json.dumps({key: LIMIT}))
    watch = SandboxWatch()
    try:
        task_id = await submit_mixed(temporal_client, key)
        await mid_run(task_id)

        pg_ctl("-m", "fast", "stop")
        stopped_at = datetime.now(UTC)
        try:
            await asyncio.sleep(OUTAGE_SEC)  # the outage itself: nothing to wait for but time
        finally:
            pg_ctl(*options, "start")
            refresh_pgserver_handle(data_dir)
        restarted_at = datetime.now(UTC)
        restarted = time.monotonic()

        await wait_for_result(temporal_client, task_id, timeout=240)
        all_done = time.monotonic() - restarted
        task = await get_task_with_trials(task_id)
        started = starts_after(task, restarted_at)
        log = worker.log()
        waited = {
            line.split("trial ")[1].split(":")[0]
            for line in log.splitlines()
            if "recording its result: database unreachable" in line
        }
        print(
            f"\nPostgres down {OUTAGE_SEC:.0f}s: {len(waited)} finished trials waited for it to "
            f"record their results; after the restart trials started at "
            f"{[round(x, 1) for x in started]}s; task done {all_done:.1f}s after the restart"
        )
        assert worker.process.poll() is None, "the worker lived through the outage"
        assert waited, "trials finished while Postgres was down"
        check_end_state(
            task,
            await slot_rows(key),
            stopped_at=stopped_at,
            restarted_at=restarted_at,
            sandbox_peak=watch.stop(),
        )
        assert task["verdict"]["details"]["overall"]["trials"] == N_TRIALS
        await check_history(temporal_client, task_id, "postgres-restart")
    finally:
        watch.stop()
