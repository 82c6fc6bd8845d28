"""A worker stopped (SIGSTOP, as a frozen VM would be) for longer than the agent timeout while
its agents run: the agents finished in 3 s, so no trial may be recorded as timed out. Each
trial's result is the agent's own, or the trial runs again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from temporalio.client import Client

from helpers import local, poll, sleeping, submit, wait_for_task

pytestmark = pytest.mark.timeout(600)

AGENT_SEC = 3.02
AGENT_TIMEOUT_SEC = 8
PAUSE_SEC = 14


def trial_process_pids(worker_pid: int) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(worker_pid), "-f", "oddish.worker.trial_processes"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(pid) for pid in found.split()]


async def test_a_paused_worker_fakes_no_agent_timeout(
    start_worker, temporal_client: Client
) -> None:
    worker = start_worker()
    task_id = await submit(
        temporal_client,
        "sleep",
        local(
            n_trials=2,
            agent_env={"ODDISH_SLEEP_SECONDS": str(AGENT_SEC)},
            agent_timeout_sec=AGENT_TIMEOUT_SEC,
        ),
        run_analysis=False,
    )

    async def agents_asleep() -> bool:
        return sleeping(AGENT_SEC) == 2

    await poll(agents_asleep, timeout=120, every=0.05, what="both agents running")
    # The worker's processes alone (its main process and its trial processes): its sandboxes
    # run on, and their agents finish while it is stopped.
    frozen = [worker.process.pid, *trial_process_pids(worker.process.pid)]
    assert len(frozen) == 2, frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(PAUSE_SEC)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()

    task = await wait_for_task(temporal_client, task_id, timeout=240)
    outcomes = Counter(t["outcome"] for t in task["trials"])
    attempts = {t["index"]: [a["status"] for a in t["attempts"]] for t in task["trials"]}
    print(
        f"\nworker stopped {PAUSE_SEC}s (agent timeout {AGENT_TIMEOUT_SEC}s, agents {AGENT_SEC}s): "
        f"outcomes {dict(outcomes)}, attempts {attempts}, "
        f"task done {time.monotonic() - resumed:.1f}s after the worker resumed"
    )
    assert outcomes.get("agent_timeout", 0) == 0, "no agent timed out: the worker was stopped"
    assert [t["status"] for t in task["trials"]] == ["success", "success"], task["trials"]
    assert all(t["reward"] == 1.0 for t in task["trials"])
