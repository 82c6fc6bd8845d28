"""The stack the benchmarks run on: a fresh embedded Postgres and Temporal dev server in a work
directory, migrated once, and oddish worker processes on them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stack:
    workers: list[subprocess.Popen[bytes]]


def _start_worker(
    work: Path, index: int, env: dict[str, str], limits: str
) -> subprocess.Popen[bytes]:
    log = open(work / f"worker-{index}.log", "wb")
    # A session of its own, so a kill reaches the worker and its sandboxes alone.
    return subprocess.Popen(
        [sys.executable, "-m", "oddish.worker", "--n-concurrent", limits],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def postgres_cpu_sec(work: Path) -> float:
    """CPU time of the stack's Postgres (a daemon of its own, found by its data directory) and
    of its backends, live and ended."""
    import psutil

    total = 0.0
    postgres: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        if str(work / "pg") in " ".join(process.info["cmdline"] or ()):
            # With its live backends, which the postmaster has not reaped yet.
            for one in (process, *process.children()):
                postgres[one.pid] = one
    for process in postgres.values():
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        # A postmaster's reaped children are its ended backends.
        total += times.user + times.system + times.children_user + times.children_system
    return total


@asynccontextmanager
async def embedded_stack(
    work: Path, *, n_workers: int, limits: dict[str, int], settings: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """Services and ``n_workers`` started workers; this process's settings point at them."""
    from oddish.config import get_settings
    from oddish.db import migrations
    from oddish.db.connection import dispose_engine
    from oddish.embedded import TemporalDevServer, free_port, start_embedded_postgres

    postgres = start_embedded_postgres(work / "pg")
    # Persisting to a file, as `oddish up` does: an in-memory server is cheaper than any user's.
    temporal = TemporalDevServer(port=free_port(), ui_port=None, db_file=work / "temporal.db")
    temporal.start()
    env = {
        "ODDISH_DATABASE_URL": postgres.url,
        "ODDISH_TEMPORAL_ADDRESS": temporal.address,
        "ODDISH_TASKS_DIR": str(work / "tasks"),
        "ODDISH_HARBOR_JOBS_DIR": str(work / "oddish-jobs"),
        "HARBOR_TELEMETRY": "0",
        **(settings or {}),
    }
    os.environ.update(env)
    get_settings.cache_clear()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        await migrations.upgrade()  # once, before workers start side by side
        workers = [_start_worker(work, i, env, json.dumps(limits)) for i in range(n_workers)]
        # Ready once every worker and each of its trial processes (one per core) listens.
        configured = env.get("ODDISH_TRIAL_PROCESSES") or os.environ.get("ODDISH_TRIAL_PROCESSES")
        trial_processes = int(configured) if configured else os.cpu_count() or 1

        def ready(i: int) -> bool:
            text = (work / f"worker-{i}.log").read_text(errors="replace")
            return (
                "runner: worker on task queue" in text
                and text.count("trial worker on task queue") >= trial_processes
            )

        while not all(ready(i) for i in range(n_workers)):
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker did not start; see its log in {work}")
            await asyncio.sleep(0.2)
        yield Stack(workers)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait()
        temporal.stop()
        await dispose_engine()
        postgres.stop()
