"""Wires one worker process: migrations, limits, the Temporal worker and the slot dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from oddish import queue
from oddish.activities import ALL_ACTIVITIES, JUDGE_ACTIVITIES
from oddish.activities.heartbeat import MAX_INTERVAL_SEC as MAX_HEARTBEAT_INTERVAL_SEC
from oddish.activities.pauses import monitoring_pauses
from oddish.config import get_settings
from oddish.db import migrations
from oddish.db.connection import dispose_engine
from oddish.gc_freeze import freeze_startup_objects
from oddish.storage import get_storage
from oddish.temporal_gateway import TemporalNotConfigured, connect, reconnect_delays
from oddish.worker.build_id import WORKER_BUILD_ID
from oddish.worker.dispatcher import SlotDispatcher
from oddish.worker.health import WorkerHealth
from oddish.worker.output_sweep import sweep_periodically
from oddish.worker.trial_processes import TrialProcesses, trial_process_count, trial_worker
from oddish.workflows import ALL_WORKFLOWS
from oddish.workflows.task_workflow import judge_task_queue

log = logging.getLogger(__name__)

# Modules the workflow sandbox imports once for all workflows.
PASSED_THROUGH = ("oddish", "pydantic", "pydantic_core", "sqlalchemy")

# Judge calls mostly wait (for a slot of their model's key, for the provider): many at once cost
# little.
JUDGE_MAX_CONCURRENT_ACTIVITIES = 200
# How long workflows wait for the trial processes to serve their task queue (they cannot while
# Temporal is unreachable, say).
TRIAL_PROCESSES_READY_WAIT_SEC = 30.0


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
    # Trials in processes of their own (none: in this process, with the workflows), started
    # first: they import Harbor and connect meanwhile.
    count = trial_process_count(settings)
    processes = TrialProcesses(count) if count else None
    if processes is not None:
        processes.start()
    trials: asyncio.Task[None] | None = None
    # Stopped after the workflows' worker (its own event: the caller's may never be set when the
    # worker ends otherwise), and waited for, so that their trials end their sandboxes.
    trials_stop = asyncio.Event()
    try:
        # Trials fetch their tasks' archives from storage: a store that cannot be used refuses
        # the start (StorageMisconfigured names the setting to fix) rather than failing every
        # trial.
        await asyncio.to_thread(get_storage().check)
        if migrate:
            await migrations.upgrade()
        await queue.apply_limits(n_concurrent or {})
    except BaseException:
        if processes is not None:
            await asyncio.to_thread(processes.stop)
        raise
    freeze_startup_objects()
    # Outputs a previous life of this worker left on the disk (it died while uploading them).
    sweeping = asyncio.create_task(sweep_periodically(stop))
    if processes is not None:
        trials = asyncio.create_task(processes.run(trials_stop))
    try:
        if processes is not None:
            await _until_ready(processes)
        with monitoring_pauses():
            await _serve_until_stopped(
                stop, health, max_concurrent_activities, trials_here=not processes
            )
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        trials_stop.set()
        if trials is not None:
            await trials
    health.worker_stopped()
    await dispose_engine()


async def _until_ready(processes: TrialProcesses) -> None:
    """Workflows are taken up once trials can run: a backlog of them taken up before would only
    slow the trial processes' start, and so the first trial."""
    began = time.monotonic()
    if await processes.ready(TRIAL_PROCESSES_READY_WAIT_SEC):
        log.info("trial processes ready after %.1fs", time.monotonic() - began)
    else:
        log.warning(
            "trial processes not all ready after %.0fs; taking workflows all the same",
            TRIAL_PROCESSES_READY_WAIT_SEC,
        )


async def _serve_until_stopped(
    stop: asyncio.Event, health: WorkerHealth, max_concurrent_activities: int, *, trials_here: bool
) -> None:
    delays = reconnect_delays()
    while not stop.is_set():
        try:
            client = await connect()
            delays = reconnect_delays()
            await _serve(client, stop, health, max_concurrent_activities, trials_here=trials_here)
        except TemporalNotConfigured:
            raise
        except Exception as exc:
            health.worker_down(exc)
            delay = next(delays)
            log.warning("worker: Temporal unavailable (%s); trying again in %.0fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


def workflow_runner(*, sandboxed: bool) -> WorkflowRunner:
    """Temporal's sandbox, or plain code (``ODDISH_WORKFLOW_SANDBOX``, off by default)."""
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    # Each workflow the worker takes up (a new task, or one evicted from its cache) imports its
    # modules afresh in the sandbox: ~90 ms of CPU each, ~35 ms with these passed through. Our
    # modules keep no mutable module state, and the others are libraries.
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
    )


async def _serve(
    client: Client,
    stop: asyncio.Event,
    health: WorkerHealth,
    max_concurrent_activities: int,
    *,
    trials_here: bool,
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
        build_id=WORKER_BUILD_ID,
        workflows=ALL_WORKFLOWS,
        workflow_runner=workflow_runner(sandboxed=settings.workflow_sandbox),
        activities=ALL_ACTIVITIES,
        max_concurrent_activities=max_concurrent_activities,
        max_cached_workflows=settings.workflow_cache_size,
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
        build_id=WORKER_BUILD_ID,
        activities=JUDGE_ACTIVITIES,
        max_concurrent_activities=JUDGE_MAX_CONCURRENT_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=5),
        max_heartbeat_throttle_interval=timedelta(seconds=MAX_HEARTBEAT_INTERVAL_SEC),
    )
    # The dispatcher stops with the worker: grants for workflows nobody runs would only wait.
    dispatcher_stop = asyncio.Event()
    dispatcher_task = asyncio.create_task(dispatcher.run(dispatcher_stop))
    workers = [worker, judge_worker]
    if trials_here:
        workers.append(trial_worker(client, settings))
    worker_task = asyncio.create_task(_run_all(workers))
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
            await asyncio.gather(*(w.shutdown() for w in workers))
        await dispatcher_task
    await worker_task


async def _run_all(workers: list[Worker]) -> None:
    """The workers until all end; one failing stops the others (the caller reconnects)."""
    runs = [asyncio.ensure_future(w.run()) for w in workers]
    done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
    if any(task.exception() for task in done):
        for run, w in zip(runs, workers, strict=True):
            if not run.done():
                await w.shutdown()
    await asyncio.gather(*runs)
