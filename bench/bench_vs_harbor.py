"""N trials of a 1-second sleep task through oddish and through Harbor's own job runner.

Both use the same task, the same concurrency and the ``local`` environment. Prints both wall
times, their ratio, and oddish's slot utilisation (ideal makespan / actual).

    uv run python bench/bench_vs_harbor.py [--trials 100] [--concurrency 8] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from datetime import datetime
from pathlib import Path

from embedded_stack import embedded_stack

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tasks" / "sleep"
SLEEP = {"ODDISH_SLEEP_SECONDS": "1"}


async def run_harbor(trials: int, concurrency: int, jobs_dir: Path) -> float:
    from harbor.job import Job
    from harbor.models.job.config import JobConfig
    from harbor.models.trial.config import AgentConfig, EnvironmentConfig, TaskConfig

    from oddish.environments import LOCAL_ENVIRONMENT_IMPORT_PATH

    config = JobConfig(
        jobs_dir=jobs_dir,
        n_attempts=trials,
        n_concurrent_trials=concurrency,
        quiet=True,
        tasks=[TaskConfig(path=TASK)],
        agents=[AgentConfig(name="oracle", env=SLEEP)],
        environment=EnvironmentConfig(import_path=LOCAL_ENVIRONMENT_IMPORT_PATH),
    )
    started = time.perf_counter()
    job = await Job.create(config)
    await job.run()
    return time.perf_counter() - started


async def run_oddish(
    trials: int, concurrency: int, n_workers: int, work: Path
) -> tuple[float, float]:
    key = f"bench/sleep-{secrets.token_hex(3)}"
    async with embedded_stack(work, n_workers=n_workers, limits={key: concurrency}):
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
                    agent="oracle", model=key, environment="local", n_trials=trials, agent_env=SLEEP
                )
            ],
        )
        started = time.perf_counter()
        task_id = await create_task(submission, client=client)
        await client.get_workflow_handle(workflow_id_for_task(task_id)).result()
        wall = time.perf_counter() - started

        task = await get_task_with_trials(task_id)
        assert all(t["status"] == "success" for t in task["trials"]), "a trial failed"
        busy = sum(
            (
                datetime.fromisoformat(t["finished_at"]) - datetime.fromisoformat(t["started_at"])
            ).total_seconds()
            for t in task["trials"]
        )
        return wall, (busy / concurrency) / wall


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="oddish worker processes")
    args = parser.parse_args()
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    with tempfile.TemporaryDirectory(prefix="oddish-bench-") as tmp:
        work = Path(tmp)
        harbor_wall = await run_harbor(args.trials, args.concurrency, work / "harbor-jobs")
        oddish_wall, utilisation = await run_oddish(
            args.trials, args.concurrency, args.workers, work
        )
    print(f"trials={args.trials} concurrency={args.concurrency} oddish workers={args.workers}")
    print(f"harbor Job wall time : {harbor_wall:7.2f} s")
    print(f"oddish wall time     : {oddish_wall:7.2f} s")
    print(f"ratio oddish/harbor  : {oddish_wall / harbor_wall:7.3f}")
    print(f"oddish slot utilisation (ideal makespan / actual): {utilisation:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
