"""Maintenance never delays a grant: while the reaper asks Temporal about hundreds of workflows
whose rows are past the lease, a freed slot goes to the next waiting trial within a second."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import datetime

import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from helpers import local, slot_rows, submit, unique_key, wait_for_task
from oddish.contracts import TaskWorkflowInput, TrialRef, TrialRetryPolicy
from oddish.db import slots
from oddish.db.connection import get_engine
from oddish.temporal_gateway import start_task_workflow_run, terminate_task_workflow
from oddish.workflows import workflow_id_for_task

pytestmark = pytest.mark.timeout(300)

N_STALE = 500
LEASE_SEC = 4.0


def parked_input(queue_key: str) -> TaskWorkflowInput:
    task_id = f"parked-{secrets.token_hex(6)}"
    trial = TrialRef(f"{task_id}-t0", 0, "oracle", queue_key, queue_key, "local")
    retry = TrialRetryPolicy(1, 1.0, 1.0, 30.0, 60.0)
    return TaskWorkflowInput(task_id, "parked", "parked", 0, False, [trial], retry)


async def start_parked_workflows(client: Client, queue: str, queue_key: str) -> list[str]:
    """N_STALE task workflows on a task queue no worker serves: running, as far as Temporal
    tells anyone, for as long as the test lasts. Returns their task ids."""
    inputs = [parked_input(queue_key) for _ in range(N_STALE)]
    gate = asyncio.Semaphore(32)

    async def start(inp: TaskWorkflowInput) -> None:
        async with gate:
            await start_task_workflow_run(
                client,
                inp,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                task_queue=queue,
            )

    await asyncio.gather(*(start(i) for i in inputs))
    async with get_engine().begin() as conn:
        # Limit 0: the rows wait for ever, never granted (a key saturated for hours).
        await slots.set_limit(conn, queue_key, 0)
        for inp in inputs:
            await slots.enqueue(
                conn,
                trials=[(t.trial_id, queue_key) for t in inp.trials],
                workflow_id=workflow_id_for_task(inp.task_id),
                priority=0,
                run_number=1,
            )
    return [i.task_id for i in inputs]


async def age_past_the_lease(queue_key: str) -> int:
    """Make the parked rows look unheard-of for an hour; returns how many the reaper had
    touched since the last call (it found their workflows running)."""
    async with get_engine().begin() as conn:
        rows = await conn.execute(
            text(
                """
                WITH old AS (
                    SELECT id, heartbeat FROM pgqueuer WHERE entrypoint = :key FOR UPDATE
                )
                UPDATE pgqueuer p
                SET heartbeat = now() - interval '1 hour', updated = now() - interval '1 hour'
                FROM old WHERE p.id = old.id
                RETURNING old.heartbeat > now() - interval '10 minutes'
                """
            ),
            {"key": queue_key},
        )
        return sum(1 for (touched,) in rows if touched)


async def grant_gaps(queue_key: str) -> list[float]:
    """Seconds from each slot given back on ``queue_key`` to the next grant on it (the slot
    table's own log: release and claim as the database recorded them)."""
    async with get_engine().connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT status::text, created FROM pgqueuer_log "
                "WHERE entrypoint = :key AND status IN ('picked', 'successful', 'exception') "
                "ORDER BY created, id"
            ),
            {"key": queue_key},
        )
        events: list[tuple[str, datetime]] = [(r[0], r[1]) for r in rows]
    gaps, freed = [], None
    for status, at in events:
        if status == "picked" and freed is not None:
            gaps.append((at - freed).total_seconds())
            freed = None
        elif status != "picked":
            freed = at
    return gaps


async def test_a_freed_slot_is_granted_within_a_second_while_500_stale_workflows_are_reaped(
    start_worker, temporal_client: Client, task_queue: str
) -> None:
    key, parked = unique_key("granted"), unique_key("parked")
    parked_ids = await start_parked_workflows(temporal_client, f"{task_queue}-unserved", parked)
    try:
        # A short lease: the reaper goes round every second, and each round finds the 500 rows
        # stale again (aged below), so it is busy with them all through the run.
        start_worker("--n-concurrent", json.dumps({key: 1}), ODDISH_SLOT_LEASE_SEC=str(LEASE_SEC))
        await age_past_the_lease(parked)
        touched = 0
        running = True

        async def keep_aging() -> None:
            nonlocal touched
            while running:
                await asyncio.sleep(0.25)
                touched += await age_past_the_lease(parked)

        aging = asyncio.create_task(keep_aging())
        started = time.monotonic()
        try:
            task_id = await submit(
                temporal_client,
                "sleep",
                local(n_trials=5, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "1"}),
            )
            task = await wait_for_task(temporal_client, task_id, timeout=120)
        finally:
            running = False
            await aging
        wall = time.monotonic() - started

        assert all(t["status"] == "success" for t in task["trials"])
        gaps = await grant_gaps(key)
        print(
            f"\n{len(gaps)} grants on a key at limit 1 while the reaper checked {N_STALE} stale "
            f"workflows (rows touched {touched} times in {wall:.1f}s): slot freed -> granted "
            f"{', '.join(f'{g:.3f}' for g in gaps)} s"
        )
        assert len(gaps) == 4, "each of the 4 later trials took the slot its predecessor freed"
        # The reaper worked all along: it found the parked workflows running (their rows
        # touched, none given back) round after round.
        assert touched >= 2 * N_STALE
        assert await slot_rows(parked) == N_STALE
        assert max(gaps) < 1.0, "a grant waited for maintenance"
    finally:
        await asyncio.gather(
            *(terminate_task_workflow(temporal_client, t, "test over") for t in parked_ids),
            return_exceptions=True,
        )
        async with get_engine().begin() as conn:
            await slots.release(
                conn, trial_ids=[f"{t}-t0" for t in parked_ids], log_status="canceled"
            )
