"""``from oddish.workers.queue import create_queue_manager``, as in the original Oddish.

The original returned a PGQueuer ``QueueManager`` whose ``run()`` polled the queue; ours is a
Temporal worker plus the slot dispatcher (``oddish.worker.runner.run_worker``). The object
returned keeps the original's use: ``await qm.run()`` serves until ``qm.shutdown.set()``.
"""

from __future__ import annotations

import asyncio

from oddish.worker.runner import run_worker

__all__ = ["QueueManager", "create_queue_manager", "run_worker"]


class QueueManager:
    """One worker of this process: ``run()`` serves until ``shutdown`` is set."""

    def __init__(self, n_concurrent: dict[str, int] | None = None) -> None:
        self.n_concurrent = n_concurrent
        self.shutdown = asyncio.Event()

    async def run(self) -> None:
        await run_worker(self.shutdown, n_concurrent=self.n_concurrent)


async def create_queue_manager(n_concurrent: dict[str, int] | None = None) -> QueueManager:
    """A worker ready to ``run()``; ``n_concurrent`` (queue key -> limit) is applied at start."""
    return QueueManager(n_concurrent)
