"""Recovery from a killed worker: two workers run N sleep trials under one limit; one is killed
with SIGKILL mid-run. Prints how long after its death its trials were running again on the other
worker (the first and the last of them), and how long until the whole task was done.

Runs on embedded services (a fresh pgserver Postgres and Temporal dev server in a temporary
directory). The recovery time is dominated by the trial heartbeat timeout (when Temporal presumes
an attempt lost) plus the first retry interval, both oddish settings:

    uv run python bench/bench_recovery.py [--trials 30] [--concurrency 4] [--sleep 3]
        [--heartbeat-timeout 30] [--retry-interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from embedded_stack import embedded_stack

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tasks" / "sleep"


async def run(args: argparse.Namespace, work: Path) -> None:
    key = f"bench/recovery-{secrets.token_hex(3)}"
    async with embedded_stack(
        work,
        n_workers=2,
        limits={key: args.concurrency},
        settings={
            "ODDISH_TRIAL_HEARTBEAT_TIMEOUT_SEC": str(args.heartbeat_timeout),
            "ODDISH_TRIAL_RETRY_INITIAL_INTERVAL_SEC": str(args.retry_interval),
        },
    ) as stack:
        from oddish.queue import create_task, get_task_with_trials
        from oddish.schemas import AgentRunConfig, TaskSubmission
        from oddish.temporal_gateway import connect
        from oddish.workflows import workflow_id_for_task

        client = await connect()
        submission = TaskSubmission(
            task_path=TASK,
            run_analysis=False,
            configs=[
                AgentRunConfig(
                    agent="oracle",
                    model=key,
                    environment="local",
                    n_trials=args.trials,
                    agent_env={"ODDISH_SLEEP_SECONDS": str(args.sleep)},
                )
            ],
        )
        task_id = await create_task(submission, client=client)

        # Mid-run: a fifth of the trials done, and one worker running at least two.
        while True:
            task = await get_task_with_trials(task_id)
            done = sum(t["status"] == "success" for t in task["trials"])
            running = Counter(
                a["worker"]
                for t in task["trials"]
                for a in t["attempts"]
                if a["status"] == "running"
            )
            busiest = running.most_common(1)
            if done >= args.trials // 5 and busiest and busiest[0][1] >= 2:
                break
            await asyncio.sleep(0.1)
        identity, n_running = busiest[0]
        [victim] = [w for w in stack.workers if identity.endswith(f":{w.pid}")]
        killed_at = datetime.now(UTC)
        killed = time.perf_counter()
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()

        await client.get_workflow_handle(workflow_id_for_task(task_id)).result()
        all_done = time.perf_counter() - killed
        task = await get_task_with_trials(task_id)

    lost = [t for t in task["trials"] if any(a["status"] == "lost" for a in t["attempts"])]
    again = []
    for trial in lost:
        attempts = sorted(trial["attempts"], key=lambda a: a["number"])
        i = next(i for i, a in enumerate(attempts) if a["status"] == "lost")
        again.append(
            (datetime.fromisoformat(attempts[i + 1]["started_at"]) - killed_at).total_seconds()
        )
    assert all(t["status"] == "success" for t in task["trials"]), "a trial failed"
    assert all(sum(a["status"] == "success" for a in t["attempts"]) == 1 for t in task["trials"])

    print(
        f"trials={args.trials} concurrency={args.concurrency} sleep={args.sleep}s workers=2 "
        f"heartbeat timeout={args.heartbeat_timeout}s first retry after {args.retry_interval}s"
    )
    print(f"killed a worker running {n_running} trials; lost attempts recorded: {len(lost)}")
    if again:
        print(f"worker death -> first of its trials running again : {min(again):7.2f} s")
        print(f"worker death -> last of its trials running again  : {max(again):7.2f} s")
    print(f"worker death -> task done                          : {all_done:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=3, help="seconds each trial's agent sleeps")
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=30,
        help="ODDISH_TRIAL_HEARTBEAT_TIMEOUT_SEC (default: oddish's default)",
    )
    parser.add_argument(
        "--retry-interval",
        type=float,
        default=5,
        help="ODDISH_TRIAL_RETRY_INITIAL_INTERVAL_SEC (default: oddish's default)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    with tempfile.TemporaryDirectory(prefix="oddish-bench-recovery-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
