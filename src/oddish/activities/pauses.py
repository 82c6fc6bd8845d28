"""Notices when this process was not running: stopped (SIGSTOP), a frozen VM, or an event loop
blocked by work that should not be on it.

Harbor times an agent with ``asyncio.wait_for`` on this process's clock. A process stopped for
longer than the timeout wakes with the timer already due, and the timeout fires before the
agent's own, long finished, completion is read: an agent that took 3 s is recorded as timed out.
Time this process spent not running is not the agent's, so such a timeout is not believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

TICK_SEC = 0.25
# A tick later than this by more than the tick itself means the process was not running.
STALL_SEC = 1.0


@dataclass
class PauseMonitor:
    """Ticks on the event loop; records each stretch the loop did not run."""

    stalls: list[tuple[float, float]] = field(default_factory=list)
    last_tick: float | None = None

    async def run(self) -> None:
        self.last_tick = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SEC)
            now = time.monotonic()
            self._note(self.last_tick, now)
            self.last_tick = now
            # Hours of history are a few entries; older ones can no longer overlap an attempt.
            if len(self.stalls) > 10_000:
                del self.stalls[:5_000]

    def _note(self, since: float, now: float) -> None:
        lost = now - since - TICK_SEC
        if lost > STALL_SEC:
            self.stalls.append((since + TICK_SEC, now))

    def stalled_since(self, start: float) -> float:
        """Seconds since ``start`` (a time.monotonic() reading) the loop did not run, including
        a stall still under way that the ticking has not recorded yet."""
        now = time.monotonic()
        spans = list(self.stalls)
        if self.last_tick is not None and now - self.last_tick - TICK_SEC > STALL_SEC:
            spans.append((self.last_tick + TICK_SEC, now))
        return sum(max(0.0, end - max(begin, start)) for begin, end in spans if end > start)


_monitor: PauseMonitor | None = None


def stalled_since(start: float) -> float:
    """As PauseMonitor.stalled_since, for the monitor this process runs (0 when none runs)."""
    return 0.0 if _monitor is None else _monitor.stalled_since(start)


@contextlib.contextmanager
def monitoring_pauses() -> Iterator[PauseMonitor]:
    """Run the process's pause monitor while the block runs (the worker's lifetime)."""
    global _monitor
    monitor = PauseMonitor()
    task = asyncio.ensure_future(monitor.run())
    _monitor = monitor
    try:
        yield monitor
    finally:
        _monitor = None
        task.cancel()
