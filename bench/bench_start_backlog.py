"""A backlog of submitted tasks and a fresh worker: how soon the first trial starts, how soon every
task is started, and how busy the key's slots are meanwhile.

Tasks are submitted while no worker runs (each: the sleep task, its trials on one key), then one
worker starts. ``--mode started`` (default): the submitter started every workflow, Temporal holds
them until a worker comes. ``--mode unstarted``: the submitter could not reach Temporal, the
tasks are only recorded and the worker's starter starts them once they are older than the slot
lease (set to ``--lease`` for the worker; the worker starts once the newest task is that old).
Prints, from the moment the worker is up (it takes workflows once its trial processes serve
their queue): the first trial's start (and from the worker's process start), every task started
(its workflow recorded it running), and the key's slots busy on average until then.

    uv run python bench/bench_start_backlog.py [--tasks 2000] [--mode started|unstarted]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from embedded_stack import _start_worker, embedded_stack

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tasks" / "sleep"
SUBMIT_CONCURRENCY = 16


async def submit_backlog(
    n_tasks: int, n_trials: int, key: str, experiment: str, sleep: str, *, start: bool
) -> None:
    from oddish.queue import WorkflowNotStartedYet, create_task
    from oddish.schemas import AgentRunConfig, TaskSubmission
    from oddish.temporal_gateway import connect

    client = await connect() if start else None
    submission = TaskSubmission(
        task_path=TASK,
        experiment_id=experiment,
        run_analysis=False,
        configs=[
            AgentRunConfig(
                agent="oracle",
                model=key,
                environment="local",
                n_trials=n_trials,
                agent_env={"ODDISH_SLEEP_SECONDS": sleep},
            )
        ],
    )
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    async def one() -> None:
        # --mode unstarted: recorded, for the workers to start.
        async with gate:
            with contextlib.suppress(WorkflowNotStartedYet):
                await create_task(submission, client=client)

    await one()  # the experiment, before submissions race to create it
    await asyncio.gather(*(one() for _ in range(n_tasks - 1)))


async def progress(experiment: str, key: str) -> tuple[int, datetime | None, int]:
    """Tasks still pending, the first trial's start, and the key's slots held right now."""
    from sqlalchemy import func, select

    from oddish.db import slots
    from oddish.db.connection import get_engine, get_session
    from oddish.db.models import TaskModel, TrialModel

    async with get_session() as session:
        pending = (
            await session.execute(
                select(func.count())
                .select_from(TaskModel)
                .where(TaskModel.experiment_id == experiment, TaskModel.status == "pending")
            )
        ).scalar_one()
        first = (
            await session.execute(
                select(func.min(TrialModel.started_at))
                .join(TaskModel, TaskModel.id == TrialModel.task_id)
                .where(TaskModel.experiment_id == experiment)
            )
        ).scalar_one()
    async with get_engine().connect() as conn:
        stats = await slots.queue_stats(conn, default_limit=8)
    held = next((int(s["running"]) for s in stats if s["key"] == key), 0)
    return pending, first, held


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=1, help="trials per task")
    parser.add_argument("--limit", type=int, default=8, help="the key's concurrency limit")
    parser.add_argument("--sleep", default="1", help="seconds each trial sleeps")
    parser.add_argument("--mode", choices=("started", "unstarted"), default="started")
    parser.add_argument("--lease", type=float, default=20.0, help="worker's lease (unstarted)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    key = f"bench/backlog-{secrets.token_hex(3)}"
    experiment = f"backlog-{secrets.token_hex(3)}"
    unstarted = args.mode == "unstarted"
    with tempfile.TemporaryDirectory(prefix="oddish-bench-", delete=not args.keep) as tmp:
        if args.keep:
            print(f"work directory: {tmp}")
        work = Path(tmp)
        async with embedded_stack(work, n_workers=0, limits={}) as stack:
            began = time.perf_counter()
            await submit_backlog(
                args.tasks, args.trials, key, experiment, args.sleep, start=not unstarted
            )
            submitted = time.perf_counter() - began
            if unstarted:
                await asyncio.sleep(args.lease + 1)  # the starter takes tasks older than the lease
            extra = {"ODDISH_SLOT_LEASE_SEC": str(args.lease)} if unstarted else {}
            spawned_at = datetime.now(UTC)
            worker = _start_worker(work, 0, {**os.environ, **extra}, json.dumps({key: args.limit}))
            stack.workers.append(worker)
            log = work / "worker-0.log"
            while "runner: worker on task queue" not in log.read_text(errors="replace"):
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker did not start; see {log}")
                await asyncio.sleep(0.05)
            # Up: it takes workflows (once its trial processes serve their queue).
            up, up_at = time.perf_counter(), datetime.now(UTC)

            first: datetime | None = None
            held_samples: list[int] = []
            all_started = None
            while time.perf_counter() - up < args.timeout:
                pending, first, held = await progress(experiment, key)
                if first is not None and all_started is None:
                    held_samples.append(held)
                if pending == 0 and all_started is None:
                    all_started = time.perf_counter() - up
                if all_started is not None and first is not None:
                    break
                await asyncio.sleep(0.25)
            # Temporal's own warning of a workflow task held past 5 s: the worker's CPU is short.
            slow_tasks = log.read_text(errors="replace").count("TMPRL1104")
            # The worker main process holds the workflows it caches (ODDISH_WORKFLOW_CACHE_SIZE).
            worker_rss = psutil.Process(worker.pid).memory_info().rss / 2**20
    if all_started is None:
        print(f"not every task started within {args.timeout:.0f}s")
    first_after = (first - up_at).total_seconds() if first else float("nan")
    first_after_spawn = (first - spawned_at).total_seconds() if first else float("nan")
    up_after_spawn = (up_at - spawned_at).total_seconds()
    busy = sum(held_samples) / len(held_samples) if held_samples else 0.0
    print(
        f"tasks={args.tasks} trials/task={args.trials} key limit={args.limit} "
        f"trial sleep={args.sleep}s mode={args.mode}"
    )
    print(f"submitted in                     : {submitted:7.1f} s")
    print(f"worker up after its process start: {up_after_spawn:7.2f} s")
    print(f"first trial started after worker : {first_after:7.2f} s")
    print(f"  ... after its process start    : {first_after_spawn:7.2f} s")
    print(f"every task started after worker  : {all_started or float('nan'):7.1f} s")
    print(f"slots busy meanwhile (average)   : {busy:7.2f} of {args.limit}")
    print(f"workflow tasks over 5 s (TMPRL1104): {slow_tasks}")
    print(f"worker main process RSS then     : {worker_rss:7.0f} MB")
    print("  (slots sampled from the first trial's start until every task was started)")


if __name__ == "__main__":
    asyncio.run(main())
