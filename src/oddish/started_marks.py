"""Marks on tasks whose workflows were started, many in one statement.

A submission marks its task once Temporal has taken its workflow, so that the workers never ask
Temporal about it. A mark is only that saving: one lost (the process killed before its UPDATE)
costs a worker one question to Temporal. So an API submission does not wait for it: its mark
waits about ``LINGER_SEC`` for the marks of the submissions beside it, and one UPDATE carries
them all. Waited for, each mark of a busy API paid a transaction of its own, as much CPU as
storing the task's archive. ``flush`` writes what is pending at once: the API calls it as it
shuts down, a library submission before it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from oddish.db import records
from oddish.db.connection import autocommit_connection

log = logging.getLogger(__name__)

# How long a mark waits for others to go with it: at 100 submissions a second, a fifth of a
# second makes batches of about twenty.
LINGER_SEC = 0.2


class StartedMarks:
    """Marks of one process, made on one event loop at a time."""

    def __init__(self, linger_sec: float = LINGER_SEC) -> None:
        self._linger_sec = linger_sec
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[str] = []
        self._flushing: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    def mark(self, task_id: str) -> None:
        """Mark the task within about ``linger_sec``; a failure is logged, not raised."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a test's, say): what an old one left went with it.
            self._loop, self._pending, self._flushing = loop, [], None
            self._hurry = asyncio.Event()
        self._pending.append(task_id)
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())

    async def flush(self) -> None:
        """Write the marks made so far now, and wait until they are written (or failed)."""
        while (flushing := self._flushing) is not None and self._loop is asyncio.get_running_loop():
            self._hurry.set()
            await asyncio.wait({flushing})

    async def _flush(self) -> None:
        try:
            while self._pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._linger_sec)
                batch, self._pending = self._pending, []
                try:
                    async with autocommit_connection() as conn:
                        await records.mark_workflows_started(conn, batch)
                except Exception as exc:
                    # Unmarked, each of these tasks costs a worker one question to Temporal.
                    log.warning("could not mark %d started task(s): %s", len(batch), exc)
        finally:
            # Only this loop's own flusher: an old loop's must not forget a new one's.
            if self._flushing is asyncio.current_task():
                self._flushing = None
                self._hurry.clear()


STARTED_MARKS = StartedMarks()
