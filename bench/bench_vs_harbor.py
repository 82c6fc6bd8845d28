"""N trials of a sleep task through oddish and through Harbor's own job runner.

Both use the same task, the same concurrency and the ``local`` environment. Prints both wall
times, their ratio, the slot utilisation of both (ideal makespan / actual, and busy slot time
while trials wait: from the first start to the last), and for both the gap
from a trial's end to the start of the trial that takes its slot while trials still wait (the
k-th end hands its slot to the (concurrency + k)-th start), p50 and p95.

    uv run python bench/bench_vs_harbor.py [--trials 100] [--concurrency 8] [--sleep 1]
        [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from embedded_stack import embedded_stack, postgres_cpu_sec

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tasks" / "sleep"


def handover_gaps(spans: list[tuple[datetime, datetime]], concurrency: int) -> list[float]:
    """Seconds from each end to the start that took its slot, while trials waited."""
    starts = sorted(start for start, _ in spans)
    ends = sorted(end for _, end in spans)
    return [
        (starts[concurrency + k] - ends[k]).total_seconds() for k in range(len(spans) - concurrency)
    ]


def saturated_utilisation(spans: list[tuple[datetime, datetime]], concurrency: int) -> float:
    """Busy slot time over slot time from the first start to the last: the stretch in which
    trials wait for a slot throughout, so every idle slot is the runner's hand-over. The whole
    run's figure also counts the start-up, the last round (half full when the trials are not a
    multiple of the limit) and the end."""
    first = min(start for start, _ in spans)
    last = max(start for start, _ in spans)
    window = (last - first).total_seconds()
    busy = sum(
        max(0.0, (min(end, last) - max(start, first)).total_seconds()) for start, end in spans
    )
    return busy / (concurrency * window) if window > 0 else float("nan")


def own_cpu_sec() -> float:
    """CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_sec() -> float:
    """CPU time of this process's children that ended (and of their own ended children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def temporal_cpu_sec() -> float:
    """CPU time so far of the Temporal dev server this process started."""
    import psutil

    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if "temporal" in " ".join(process.cmdline()[:3]):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def worker_cpu_sec(pids: list[int]) -> dict[str, float]:
    """CPU time so far of the worker processes: their main processes, their trial processes,
    and what those trial processes started and reaped (the sandboxes and what ran in them)."""
    import psutil

    split = {"main process": 0.0, "trial processes": 0.0, "their sandboxes": 0.0}
    for pid in pids:
        try:
            main = psutil.Process(pid)
            times = main.cpu_times()
            split["main process"] += times.user + times.system
            children = main.children()
        except psutil.Error:
            continue
        for child in children:
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            split["trial processes"] += times.user + times.system
            split["their sandboxes"] += times.children_user + times.children_system
    return split


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_harbor(
    trials: int, concurrency: int, jobs_dir: Path, sleep: dict[str, str]
) -> tuple[float, float, list[float]]:
    """Wall time, slot utilisation by oddish's measure, and hand-over gaps."""
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
        agents=[AgentConfig(name="oracle", env=sleep)],
        environment=EnvironmentConfig(import_path=LOCAL_ENVIRONMENT_IMPORT_PATH),
    )
    started = time.perf_counter()
    job = await Job.create(config)
    result = await job.run()
    wall = time.perf_counter() - started
    spans = [
        (r.started_at, r.finished_at)
        for r in result.trial_results
        if r.started_at is not None and r.finished_at is not None
    ]
    busy = sum((end - start).total_seconds() for start, end in spans)
    if spans:
        waiting = saturated_utilisation(spans, concurrency)
        print(f"harbor: slot utilisation while trials wait {waiting:.3f}")
    return wall, (busy / concurrency) / wall, handover_gaps(spans, concurrency)


async def run_oddish(
    trials: int, concurrency: int, n_workers: int, work: Path, sleep: dict[str, str]
) -> tuple[float, float, list[float], float]:
    """Wall time, slot utilisation, hand-over gaps, and Postgres's CPU meanwhile."""
    key = f"bench/sleep-{secrets.token_hex(3)}"
    async with embedded_stack(work, n_workers=n_workers, limits={key: concurrency}) as stack:
        worker_pids = [worker.pid for worker in stack.workers]
        postgres_before = postgres_cpu_sec(work)
        temporal_before = temporal_cpu_sec()
        workers_before = worker_cpu_sec(worker_pids)
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
                    agent="oracle", model=key, environment="local", n_trials=trials, agent_env=sleep
                )
            ],
        )
        started = time.perf_counter()
        submitted_at = datetime.now(UTC)
        task_id = await create_task(submission, client=client)
        await client.get_workflow_handle(workflow_id_for_task(task_id)).result()
        wall = time.perf_counter() - started

        task = await get_task_with_trials(task_id)
        assert all(t["status"] == "success" for t in task["trials"]), "a trial failed"
        spans = [
            (datetime.fromisoformat(t["started_at"]), datetime.fromisoformat(t["finished_at"]))
            for t in task["trials"]
        ]
        postgres_cpu = postgres_cpu_sec(work) - postgres_before
        print(
            f"oddish: Temporal {1000 * (temporal_cpu_sec() - temporal_before) / trials:.0f} ms, "
            f"Postgres {1000 * postgres_cpu / trials:.0f} ms of CPU per trial"
        )
        workers_after = worker_cpu_sec(worker_pids)
        print(
            "oddish: workers' "
            + ", ".join(
                f"{part} {1000 * (workers_after[part] - workers_before[part]) / trials:.0f} ms"
                for part in workers_after
            )
            + " of CPU per trial"
        )
        busy = sum((end - start).total_seconds() for start, end in spans)
        print(
            "oddish: slot utilisation while trials wait "
            f"{saturated_utilisation(spans, concurrency):.3f}"
        )
        first = (min(start for start, _ in spans) - submitted_at).total_seconds()
        last = wall - (max(end for _, end in spans) - submitted_at).total_seconds()
        print(
            f"oddish: first trial started {first:.2f} s after submission; task done "
            f"{last:.2f} s after the last trial"
        )
        return wall, (busy / concurrency) / wall, handover_gaps(spans, concurrency), postgres_cpu


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="oddish worker processes")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each agent sleeps")
    args = parser.parse_args()
    sleep = {"ODDISH_SLEEP_SECONDS": f"{args.sleep:g}"}
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    with tempfile.TemporaryDirectory(prefix="oddish-bench-") as tmp:
        work = Path(tmp)
        cpu_before = own_cpu_sec() + children_cpu_sec()
        harbor_wall, harbor_utilisation, harbor_gaps = await run_harbor(
            args.trials, args.concurrency, work / "harbor-jobs", sleep
        )
        harbor_cpu = own_cpu_sec() + children_cpu_sec() - cpu_before
        children_before = children_cpu_sec()
        oddish_wall, utilisation, oddish_gaps, postgres_cpu = await run_oddish(
            args.trials, args.concurrency, args.workers, work, sleep
        )
        # The workers and Temporal, ended with the stack (their start-up included), and Postgres.
        oddish_cpu = children_cpu_sec() - children_before + postgres_cpu
    print(
        f"trials={args.trials} concurrency={args.concurrency} sleep={args.sleep:g}s "
        f"oddish workers={args.workers}"
    )
    print(f"harbor Job wall time : {harbor_wall:7.2f} s")
    print(f"oddish wall time     : {oddish_wall:7.2f} s")
    print(f"ratio oddish/harbor  : {oddish_wall / harbor_wall:7.3f}")
    print(
        f"slot utilisation (ideal makespan / actual): oddish {utilisation:.3f}, "
        f"harbor {harbor_utilisation:.3f}"
    )
    print(
        f"CPU per trial        : harbor {1000 * harbor_cpu / args.trials:.0f} ms, oddish "
        f"{1000 * oddish_cpu / args.trials:.0f} ms (workers, Temporal, Postgres; start-up "
        "included)"
    )
    for name, gaps in (("harbor", harbor_gaps), ("oddish", oddish_gaps)):
        print(
            f"{name} end -> next start on the saturated key: p50 {percentile(gaps, 0.5):.2f} s, "
            f"p95 {percentile(gaps, 0.95):.2f} s"
        )


if __name__ == "__main__":
    asyncio.run(main())
