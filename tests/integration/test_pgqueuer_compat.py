"""PGQueuer 1.6 reads our slot table correctly and a real PGQueuer worker shares a key's limit."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import asyncpg
import pytest
from pgqueuer import PgQueuer, Queries
from pgqueuer.models import Job
from temporalio.client import Client

from helpers import local, submit, unique_key, wait_for_task
from oddish.config import get_settings
from oddish.db import slots
from oddish.db.connection import get_engine, plain_dsn

pytestmark = pytest.mark.timeout(600)


async def test_queue_size_counts_our_waiting_and_holding_rows(migrated: None) -> None:
    key = unique_key("qsize")
    trials = [(f"fake-{uuid.uuid4().hex}", key) for _ in range(5)]
    async with get_engine().begin() as conn:
        await slots.set_limit(conn, key, 2)
        await slots.enqueue(conn, trials=trials, workflow_id="wf-qsize", priority=3, run_number=1)
        await slots.enqueue(
            conn, trials=trials[:1], workflow_id="wf-qsize", priority=3, run_number=1
        )
    async with get_engine().begin() as conn:
        claims = await slots.claim(conn, queue_key=key, default_limit=8, manager_id=uuid.uuid4())
    assert len(claims) == 2 and sorted(c.slot for c in claims) == [0, 1]

    conn = await asyncpg.connect(plain_dsn(get_settings().database_url))
    try:
        sizes = {
            (s.status, s.priority): s.count
            for s in await Queries.from_asyncpg_connection(conn).queue_size()
            if s.entrypoint == key
        }
    finally:
        await conn.close()
    assert sizes == {("queued", 3): 3, ("picked", 3): 2}

    async with get_engine().begin() as conn:
        assert (
            await slots.release(conn, trial_ids=[t for t, _ in trials], log_status="canceled") == 5
        )


async def test_real_pgqueuer_worker_and_oddish_share_one_limit(
    start_worker, temporal_client: Client
) -> None:
    key, limit = unique_key("shared"), 2
    start_worker("--n-concurrent", json.dumps({key: limit}))
    dsn = plain_dsn(get_settings().database_url)

    worker_conn = await asyncpg.connect(dsn)
    producer_conn = await asyncpg.connect(dsn)
    observer = await asyncpg.connect(dsn)
    pgq = PgQueuer.from_asyncpg_connection(worker_conn)
    ran: list[int] = []

    @pgq.entrypoint(key, concurrency_limit=limit)
    async def work(job: Job) -> None:
        await asyncio.sleep(1.0)
        ran.append(job.id)

    peak = 0
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop_sampling.is_set():
            holders = await observer.fetchval(
                "SELECT count(*) FROM pgqueuer"
                " WHERE entrypoint = $1 AND queue_manager_id IS NOT NULL",
                key,
            )
            peak = max(peak, holders)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    runner = asyncio.create_task(pgq.run(dequeue_timeout=timedelta(seconds=0.5), batch_size=2))
    try:
        await Queries.from_asyncpg_connection(producer_conn).enqueue([key] * 6, [b"x"] * 6, [0] * 6)
        task_id = await submit(
            temporal_client,
            "sleep",
            local(n_trials=6, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "1"}),
        )
        task = await wait_for_task(temporal_client, task_id)
        for _ in range(100):
            if len(ran) == 6:
                break
            await asyncio.sleep(0.2)
    finally:
        pgq.shutdown.set()
        await runner
        stop_sampling.set()
        await sampler
        for conn in (worker_conn, producer_conn, observer):
            await conn.close()

    assert len(ran) == 6, "every PGQueuer job ran"
    assert all(t["status"] == "success" for t in task["trials"])
    assert peak == limit, f"holders peaked at {peak} with a shared limit of {limit}"
