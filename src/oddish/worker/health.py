"""What a worker process says of itself: whether its Temporal worker polls and whether its slot
dispatcher goes round. ``/health`` reports it for the worker inside the API's process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# A dispatcher round that has not come for this many poll intervals means it is stuck.
STALLED_AFTER_POLLS = 3.0
MIN_STALLED_AFTER_SEC = 10.0


@dataclass
class WorkerHealth:
    poll_interval_sec: float
    temporal_worker: str = "starting"
    temporal_error: str | None = None
    dispatcher_round_at: float | None = None

    def worker_running(self) -> None:
        self.temporal_worker, self.temporal_error = "running", None

    def worker_down(self, exc: BaseException) -> None:
        self.temporal_worker = "reconnecting"
        self.temporal_error = f"{type(exc).__name__}: {exc}"

    def worker_stopped(self) -> None:
        self.temporal_worker = "stopped"

    def dispatcher_went_round(self) -> None:
        self.dispatcher_round_at = time.monotonic()

    def _dispatcher_state(self) -> tuple[str, float | None]:
        if self.dispatcher_round_at is None:
            return "starting", None
        ago = time.monotonic() - self.dispatcher_round_at
        stalled_after = max(MIN_STALLED_AFTER_SEC, STALLED_AFTER_POLLS * self.poll_interval_sec)
        return ("running" if ago < stalled_after else "stalled"), ago

    @property
    def ok(self) -> bool:
        return self.temporal_worker == "running" and self._dispatcher_state()[0] == "running"

    def report(self) -> dict[str, Any]:
        dispatcher, ago = self._dispatcher_state()
        return {
            "temporal_worker": self.temporal_worker,
            "temporal_error": self.temporal_error,
            "dispatcher": dispatcher,
            "dispatcher_last_round_sec_ago": None if ago is None else round(ago, 1),
        }
