"""Heartbeats from a loop of their own while an activity works, so that Temporal tells a worker
that stopped (killed, paused, a frozen VM) from one that is merely slow, within the heartbeat
timeout rather than the activity's whole start-to-close timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio import activity

# An activity run without a heartbeat timeout (tests, old workflow code) still heartbeats.
DEFAULT_TIMEOUT = timedelta(seconds=30)
# A cancel reaches a running activity only in the answer to one of its heartbeats, so heartbeats
# go out at least this often (the worker's heartbeat throttle is set to match): a cancelled
# trial's sandbox is torn down within a few seconds, not within most of the heartbeat timeout.
MAX_INTERVAL_SEC = 2.0


def heartbeat_interval_sec(timeout: timedelta | None) -> float:
    """A third of the timeout, at most 2 s: a cancel is only delivered in a heartbeat's answer."""
    seconds = (timeout or DEFAULT_TIMEOUT).total_seconds()
    return max(0.2, min(MAX_INTERVAL_SEC, seconds / 3))


async def _beat(interval_sec: float) -> None:
    # The first one after an interval, not at once: Temporal counts the heartbeat timeout from
    # the activity's start, and a short activity then makes no heartbeat call at all.
    while True:
        await asyncio.sleep(interval_sec)
        activity.heartbeat()


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[float]:
    """Heartbeat the current activity until the block ends; yields the heartbeat timeout in s."""
    timeout = activity.info().heartbeat_timeout
    beat = asyncio.ensure_future(_beat(heartbeat_interval_sec(timeout)))
    try:
        yield (timeout or DEFAULT_TIMEOUT).total_seconds()
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
