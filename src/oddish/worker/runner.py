"""Wires one worker process: migrations, limits, the Temporal worker and the slot dispatcher."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta

from temporalio.worker import Worker

from oddish import queue
from oddish.activities import ALL_ACTIVITIES
from oddish.activities.trial import MAX_HEARTBEAT_INTERVAL_SEC
from oddish.config import get_settings
from oddish.db import migrations
from oddish.db.connection import dispose_engine
from oddish.temporal_gateway import connect
from oddish.worker.dispatcher import SlotDispatcher
from oddish.workflows import ALL_WORKFLOWS

log = logging.getLogger(__name__)


async def run_worker(
    stop: asyncio.Event,
    *,
    n_concurrent: dict[str, int] | None = None,
    max_concurrent_activities: int = 100,
    migrate: bool = True,
) -> None:
    settings = get_settings()
    if not settings.harbor_telemetry:
        os.environ.setdefault("HARBOR_TELEMETRY", "0")
    if migrate:
        await migrations.upgrade()
    await queue.apply_limits(n_concurrent or {})
    client = await connect()
    dispatcher = SlotDispatcher(
        client,
        default_limit=settings.default_model_concurrency,
        poll_interval_sec=settings.dispatcher_poll_interval_sec,
        lease_sec=settings.slot_lease_sec,
    )
    worker = Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=ALL_WORKFLOWS,
        activities=ALL_ACTIVITIES,
        max_concurrent_activities=max_concurrent_activities,
        # Eager dispatch would run every trial on the worker that holds the workflow;
        # through the task queue, trials spread over all workers.
        disable_eager_activity_execution=True,
        graceful_shutdown_timeout=timedelta(seconds=5),
        # By default heartbeats are held back for 80% of the heartbeat timeout (24 s of 30 s), and
        # a cancel only reaches a trial in the answer to one: send them as the trial beats.
        max_heartbeat_throttle_interval=timedelta(seconds=MAX_HEARTBEAT_INTERVAL_SEC),
    )
    log.info(
        "worker on task queue %r, dispatcher %s",
        settings.temporal_task_queue,
        dispatcher.manager_id,
    )
    dispatcher_task = asyncio.create_task(dispatcher.run(stop))
    async with worker:
        await stop.wait()
    await dispatcher_task
    await dispose_engine()
