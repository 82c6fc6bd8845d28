"""The pause monitor sees the time this process did not run, and only that."""

from __future__ import annotations

import asyncio
import time

from oddish.activities import pauses


async def test_a_blocked_loop_is_counted_and_a_quiet_one_is_not() -> None:
    with pauses.monitoring_pauses() as monitor:
        await asyncio.sleep(0.6)
        start = time.monotonic()
        await asyncio.sleep(1.0)
        assert pauses.stalled_since(start) == 0.0, "sleeping on the loop is not a stall"
        time.sleep(2.0)  # the loop cannot run: what a SIGSTOP or blocking work does to it
        # Counted before the monitor has ticked again: a stall still under way.
        assert 1.5 < pauses.stalled_since(start) < 2.5
        await asyncio.sleep(0.6)
        assert 1.5 < monitor.stalled_since(start) < 2.5
        assert monitor.stalled_since(time.monotonic()) == 0.0
    assert pauses.stalled_since(start) == 0.0, "no monitor, nothing known"
