"""An agent that solves nothing but leaves what real agents leave in its logs directory: an ATIF
trajectory (agent/trajectory.json), a big log, and an HTML page a browser must never run."""

from __future__ import annotations

import json
from typing import Any

from harbor.agents.nop import NopAgent
from harbor.environments.base import BaseEnvironment
from harbor.models.agent.context import AgentContext

BIG_LOG_BYTES = 12 * 1024 * 1024 + 17


def trajectory() -> dict[str, Any]:
    return {
        "schema_version": "ATIF-v1.4",
        "session_id": "test-session",
        "agent": {"name": "trajectory-agent", "version": "1.0.0"},
        "steps": [
            {"step_id": 1, "source": "user", "message": "say hello"},
            {"step_id": 2, "source": "agent", "message": "hello, ünïcode ✓"},
        ],
    }


def big_log_line(i: int) -> bytes:
    return f"line {i:08d} of a long agent log\n".encode()


class TrajectoryAgent(NopAgent):
    @staticmethod
    def name() -> str:
        return "trajectory-agent"

    async def run(
        self, instruction: str, environment: BaseEnvironment, context: AgentContext
    ) -> None:
        (self.logs_dir / "trajectory.json").write_text(json.dumps(trajectory()))
        (self.logs_dir / "page.html").write_text("<script>alert(document.cookie)</script>")
        with open(self.logs_dir / "big.log", "wb") as out:
            written, i = 0, 0
            while written < BIG_LOG_BYTES:
                line = big_log_line(i)[: BIG_LOG_BYTES - written]
                out.write(line)
                written += len(line)
                i += 1


HUGE_LOG_BYTES = 50 * 1024 * 1024
HEAD_MARKER = "HEAD-OF-THE-HUGE-LOG"
MIDDLE_MARKER = "MIDDLE-OF-THE-HUGE-LOG"
TAIL_MARKER = "TAIL-OF-THE-HUGE-LOG"


class HugeLogAgent(NopAgent):
    """Writes a 50 MB log (and no trajectory): the judge must see its head and tail only."""

    @staticmethod
    def name() -> str:
        return "huge-log-agent"

    async def run(
        self, instruction: str, environment: BaseEnvironment, context: AgentContext
    ) -> None:
        line = b"the agent thinks out loud, at length, about nothing in particular\n"
        half = HUGE_LOG_BYTES // 2
        with open(self.logs_dir / "agent.log", "wb") as out:
            out.write(f"{HEAD_MARKER}\n".encode())
            for _ in range(half // len(line)):
                out.write(line)
            out.write(f"{MIDDLE_MARKER}\n".encode())
            for _ in range(half // len(line)):
                out.write(line)
            out.write(f"{TAIL_MARKER}\n".encode())
