"""Wires one worker process: migrations, limits, the Temporal worker and the slot dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from oddish import queue
from oddish.activities import ALL_ACTIVITIES, JUDGE_ACTIVITIES
from oddish.activities.heartbeat import MAX_INTERVAL_SEC as MAX_HEARTBEAT_INTERVAL_SEC
from oddish.activities.pauses import monitoring_pauses
from oddish.config import get_settings
from oddish.db import migrations
from oddish.db.connection import dispose_engine
from oddish.storage import get_storage
from oddish.temporal_gateway import TemporalNotConfigured, connect, reconnect_delays
from oddish.worker.dispatcher import SlotDispatcher
from oddish.worker.health import WorkerHealth
from oddish.worker.output_sweep import sweep_periodically
from oddish.workflows import ALL_WORKFLOWS
from oddish.workflows.task_workflow import judge_task_queue

log = logging.getLogger(__name__)

# Judge calls mostly wait (for a slot of their model's key, for the provider): many at once cost
# little.
JUDGE_MAX_CONCURRENT_ACTIVITIES = 200


async def run_worker(
    stop: asyncio.Event,
    *,
    n_concurrent: dict[str, int] | None = None,
    max_concurrent_activities: int = 100,
    migrate: bool = True,
    health: WorkerHealth | None = None,
) -> None:
    """Run until ``stop``. Temporal unreachable (at start or later) is waited out, retrying for
    ever with backoff, never the end of the worker: the process that hosts it cannot tell."""
    settings = get_settings()
    if not settings.harbor_telemetry:
        os.environ.setdefault("HARBOR_TELEMETRY", "0")
    health = health or WorkerHealth(poll_interval_sec=settings.dispatcher_poll_interval_sec)
    # Trials fetch their tasks' archives from storage: a store that cannot be used refuses the
    # start (StorageMisconfigured names the setting to fix) rather than failing every trial.
    await asyncio.to_thread(get_storage().check)
    if migrate:
        await migrations.upgrade()
    await queue.apply_limits(n_concurrent or {})
    # Outputs a previous life of this worker left on the disk (it died while uploading them).
    sweeping = asyncio.create_task(sweep_periodically(stop))
    try:
        with monitoring_pauses():
            await _serve_until_stopped(stop, health, max_concurrent_activities)
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
    health.worker_stopped()
    await dispose_engine()


async def _serve_until_stopped(
    stop: asyncio.Event, health: WorkerHealth, max_concurrent_activities: int
) -> None:
    delays = reconnect_delays()
    while not stop.is_set():
        try:
            client = await connect()
            delays = reconnect_delays()
            await _serve(client, stop, health, max_concurrent_activities)
        except TemporalNotConfigured:
            raise
        except Exception as exc:
            health.worker_down(exc)
            delay = next(delays)
            log.warning("worker: Temporal unavailable (%s); trying again in %.0fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


async def _serve(
    client: Client, stop: asyncio.Event, health: WorkerHealth, max_concurrent_activities: int
) -> None:
    """The Temporal worker and the slot dispatcher, until ``stop`` or the worker fails."""
    settings = get_settings()
    dispatcher = SlotDispatcher(
        client,
        default_limit=settings.default_model_concurrency,
        poll_interval_sec=settings.dispatcher_poll_interval_sec,
        lease_sec=settings.slot_lease_sec,
        health=health,
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
    # Analyses and verdicts on a queue of their own: a judge call waiting for a slot of its
    # model's key holds one of these activity slots, never one a trial could use.
    judge_worker = Worker(
        client,
        task_queue=judge_task_queue(settings.temporal_task_queue),
        activities=JUDGE_ACTIVITIES,
        max_concurrent_activities=JUDGE_MAX_CONCURRENT_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=5),
        max_heartbeat_throttle_interval=timedelta(seconds=MAX_HEARTBEAT_INTERVAL_SEC),
    )
    # The dispatcher stops with the worker: grants for workflows nobody runs would only wait.
    dispatcher_stop = asyncio.Event()
    dispatcher_task = asyncio.create_task(dispatcher.run(dispatcher_stop))
    worker_task = asyncio.create_task(_run_both(worker, judge_worker))
    stopper = asyncio.create_task(stop.wait())
    health.worker_running()
    log.info(
        "worker on task queue %r, dispatcher %s",
        settings.temporal_task_queue,
        dispatcher.manager_id,
    )
    try:
        await asyncio.wait({worker_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        dispatcher_stop.set()
        if not worker_task.done():
            await asyncio.gather(worker.shutdown(), judge_worker.shutdown())
        await dispatcher_task
    await worker_task


async def _run_both(worker: Worker, judge_worker: Worker) -> None:
    """Both workers until both end; one failing stops the other (the caller reconnects)."""
    runs = [asyncio.ensure_future(worker.run()), asyncio.ensure_future(judge_worker.run())]
    done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
    if any(task.exception() for task in done):
        for other, w in zip(runs, (worker, judge_worker), strict=True):
            if not other.done():
                await w.shutdown()
    await asyncio.gather(*runs)
