"""A judge call holds a slot of its model's queue key, in the same slot table as trials.

So ``oddish limits set openai/gpt-5-mini 2`` caps the judge across every worker, and trials and
judge calls on one model share its limit. The call's row waits in line with the trials of that
key (same priority order); the dispatchers grant it as they grant a trial's, and the call, which
has no workflow signal to wait for, looks at its row until it is granted. The row is touched while
it waits and while it is held (the reaper sees it alive), and given back when the call ends;
a row left by an attempt that died is replaced by the next attempt's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

from oddish.db import slots
from oddish.db.connection import get_engine
from oddish.queue_keys import normalize_model

# How often a waiting call looks at its row, and touches it while held.
POLL_SEC = 1.0
TOUCH_SEC = 15.0


def judge_queue_key(model: str) -> str:
    """The queue key of a judge model, normalised as trials' keys are: the LiteLLM name
    ``openai/gpt-5-mini`` and ``gpt-5-mini`` are one key."""
    return normalize_model(model)


async def _state(subject: str) -> str | None:
    async with get_engine().begin() as conn:
        return await slots.judge_slot_state(conn, subject)


async def _enqueue(subject: str, queue_key: str, workflow_id: str, priority: int) -> None:
    async with get_engine().begin() as conn:
        await slots.enqueue_judge(
            conn, subject=subject, queue_key=queue_key, workflow_id=workflow_id, priority=priority
        )


async def _keep_touching(subject: str) -> None:
    while True:
        await asyncio.sleep(TOUCH_SEC)
        await _state(subject)


@contextlib.asynccontextmanager
async def judge_slot(
    subject: str, *, model: str, workflow_id: str, priority: int = 0
) -> AsyncIterator[float]:
    """Wait in line for a slot of ``model``'s key, hold it for the block, then give it back.
    ``subject`` names the call (one row per subject). Yields the seconds waited."""
    queue_key = judge_queue_key(model)
    began = time.monotonic()
    await _enqueue(subject, queue_key, workflow_id, priority)
    toucher: asyncio.Task[None] | None = None
    try:
        while True:
            state = await _state(subject)
            if state == "picked":
                break
            if state is None:
                # Given back by someone else (the reaper, a cancel): wait in line again.
                await _enqueue(subject, queue_key, workflow_id, priority)
            # Spread out, so that many waiting calls do not look at once.
            await asyncio.sleep(POLL_SEC * random.uniform(0.75, 1.25))
        toucher = asyncio.ensure_future(_keep_touching(subject))
        yield time.monotonic() - began
    finally:
        if toucher is not None:
            toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await toucher
        # Shielded: a cancelled call must still give its slot back.
        await asyncio.shield(_release(subject))


async def _release(subject: str) -> None:
    async with get_engine().begin() as conn:
        await slots.release_judge(conn, subject=subject, log_status="successful")
