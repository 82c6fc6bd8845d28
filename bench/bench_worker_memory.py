"""A worker's memory with many queued trials.

Starts the embedded Postgres and Temporal and one worker process, submits ``--tasks`` tasks of
``--trials`` trials each (the hello-pass task, oracle agent, ``local`` environment) on one queue
key at limit 1, so that nearly every trial stays queued, waits until every trial has asked for
its slot (a row in the slot table), then samples the worker's resident memory for
``--sample-sec`` seconds. Prints the worker process's RSS (and that of its trial processes, if
it has any) when every trial was queued, and the largest and last sampled.

    uv run python bench/bench_worker_memory.py [--tasks 30] [--trials 1000] [--sample-sec 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

from embedded_stack import embedded_stack

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tasks" / "hello-pass"


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MB; 0 for one that is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_pids(pid: int) -> list[int]:
    """The worker's child processes (its trial processes and their sandboxes)."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [
            int(child)
            for task in tasks
            for child in (task / "children").read_text().split()
            if child.strip()
        ]
    except OSError:
        return []


async def queued_slots(key: str) -> tuple[int, int]:
    """Rows of the key in the slot table: waiting, holding."""
    from oddish.db import slots
    from oddish.db.connection import get_engine

    async with get_engine().connect() as conn:
        stats = await slots.queue_stats(conn, default_limit=1)
    row = next((s for s in stats if s["key"] == key), None)
    return (int(row["waiting"]), int(row["running"])) if row else (0, 0)


async def submit(n_tasks: int, n_trials: int, key: str) -> None:
    from oddish.queue import create_task
    from oddish.schemas import AgentRunConfig, TaskSubmission
    from oddish.temporal_gateway import connect

    client = await connect()
    submission = TaskSubmission(
        task_path=TASK,
        run_analysis=False,
        configs=[AgentRunConfig(agent="oracle", model=key, environment="local", n_trials=n_trials)],
    )
    gate = asyncio.Semaphore(8)

    async def one() -> None:
        async with gate:
            await create_task(submission, client=client)

    await asyncio.gather(*(one() for _ in range(n_tasks)))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--trials", type=int, default=1000, help="trials per task")
    parser.add_argument("--sample-sec", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="for every trial to queue")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable of the worker (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    args = parser.parse_args()
    worker_env = dict(pair.split("=", 1) for pair in args.worker_env)
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    key = f"bench/memory-{secrets.token_hex(3)}"
    total = args.tasks * args.trials
    with tempfile.TemporaryDirectory(prefix="oddish-bench-") as tmp:
        work = Path(tmp)
        settings = {
            "ODDISH_HOME": str(work / "home"),
            "ODDISH_STORAGE_DIR": str(work / "storage"),
            **worker_env,
        }
        async with embedded_stack(work, n_workers=1, limits={key: 1}, settings=settings) as stack:
            pid = stack.workers[0].pid
            idle = rss_mb(pid)
            began = time.perf_counter()
            await submit(args.tasks, args.trials, key)
            submitted = time.perf_counter() - began
            queued_after = None
            while time.perf_counter() - began < args.timeout:
                waiting, holding = await queued_slots(key)
                if waiting + holding >= total - 1 - args.tasks:  # a few ran and finished
                    queued_after = time.perf_counter() - began
                    break
                await asyncio.sleep(1)
            at_queued = rss_mb(pid)
            samples: list[float] = []
            children: list[float] = []
            sample_end = time.perf_counter() + args.sample_sec
            while time.perf_counter() < sample_end:
                samples.append(rss_mb(pid))
                children.append(sum(rss_mb(c) for c in child_pids(pid)))
                await asyncio.sleep(1)
            waiting, holding = await queued_slots(key)
    print(f"tasks={args.tasks} trials/task={args.trials} ({total} trials) key limit=1")
    print(f"worker environment                 : {worker_env or 'as is'}")
    print(f"submitted in                       : {submitted:7.1f} s")
    queued = f"{queued_after:7.1f} s" if queued_after is not None else "not within the timeout"
    print(f"every trial queued after           : {queued}")
    print(f"slot rows at the end               : {waiting} waiting, {holding} holding")
    print(f"worker RSS idle, before submitting : {idle:7.1f} MB")
    print(f"worker RSS when all were queued    : {at_queued:7.1f} MB")
    sampled = f"{max(samples):7.1f} / {samples[-1]:.1f} MB"
    print(f"worker RSS over the sampling, max / last : {sampled} ({args.sample_sec:.0f} s)")
    print(f"its child processes' RSS, max      : {max(children):7.1f} MB")


if __name__ == "__main__":
    asyncio.run(main())
