"""``python -m oddish.workers.queue.worker``: the original Oddish's worker entry point (used by
its compose file), the same command as ``python -m oddish.worker``."""

from __future__ import annotations

from oddish.worker.__main__ import app

if __name__ == "__main__":
    app()
