"""Marks on tasks whose workflows were started, many in one statement.

A submission marks its task once Temporal has taken its workflow, so that the workers never ask
Temporal about it. Submissions side by side each paid a transaction of their own for that; here
a mark waits for the one UPDATE that carries every mark made while the previous one ran."""

from __future__ import annotations

import asyncio

from oddish.db import records
from oddish.db.connection import get_session


class StartedMarks:
    """Marks of one process, made on its event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def mark(self, task_id: str) -> None:
        """Mark the task; returns once the mark is committed, raises what the database raised."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a test's, say): what an old one left went with it.
            self._loop, self._pending, self._flushing = loop, [], None
        marked: asyncio.Future[None] = loop.create_future()
        self._pending.append((task_id, marked))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        await marked

    async def _flush(self) -> None:
        batch: list[tuple[str, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with get_session() as session:
                        await records.mark_workflows_started(session, [t for t, _ in batch])
                        await session.commit()
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        except BaseException:
            # Cancelled (the loop is closing): no waiter is left waiting.
            _settle(batch, None, cancel=True)
            _settle(self._pending, None, cancel=True)
            self._pending = []
            raise
        finally:
            self._flushing = None


def _settle(
    batch: list[tuple[str, asyncio.Future[None]]],
    error: Exception | None,
    *,
    cancel: bool = False,
) -> None:
    for _, marked in batch:
        if marked.done():
            continue  # its waiter was cancelled
        if cancel:
            marked.cancel()
        elif error is not None:
            marked.set_exception(error)
        else:
            marked.set_result(None)


STARTED_MARKS = StartedMarks()
