"""``oddish run DIR`` of many small tasks: how long the CLI takes to upload and submit them all.

Makes ``--tasks`` copies of ``examples/tasks/hello-pass`` (distinct names and instructions) in a
temporary directory, starts the embedded Postgres and Temporal, and an API process without a
worker (the tasks stay queued, nothing runs), everything under its own temporary home, then times

    oddish run DIR -a oracle --env local --n-trials N --json

as a subprocess, as a user would run it (one POST /tasks/run per task: its archive and its
sweep). Prints the wall time, tasks/s, the CPU time of each process, and checks that every task
and trial was recorded once.

    uv run python bench/bench_submit.py [--tasks 1000] [--trials 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from embedded_stack import embedded_stack, postgres_cpu_sec

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "tasks" / "hello-pass"


def make_tasks(root: Path, n_tasks: int) -> Path:
    """``n_tasks`` task directories under ``root/tasks``, each with its own instruction (so each
    upload is a distinct version, as in a real dataset)."""
    tasks = root / "tasks"
    for i in range(n_tasks):
        target = tasks / f"hello-{i:05d}"
        shutil.copytree(TASK, target)
        instruction = target / "instruction.md"
        instruction.write_text(f"{instruction.read_text()}\n(task {i})\n")
    return tasks


def start_api(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    from oddish.embedded import free_port

    port = free_port()
    log = open(work / "api.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "oddish.api", "--no-workers", "--port", str(port)],
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start; see {work / 'api.log'}")
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_sec(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def services_cpu_sec(work: Path, api_pid: int) -> tuple[float, float]:
    """CPU time of the services: this process's other descendants (the Temporal dev server),
    and the embedded Postgres."""
    import psutil

    temporal = 0.0
    for process in psutil.Process().children(recursive=True):
        if process.pid == api_pid:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        temporal += times.user + times.system + times.children_user + times.children_system
    return temporal, postgres_cpu_sec(work)


async def recorded(experiment: str) -> tuple[int, int]:
    """Tasks and trials of the experiment in the database."""
    from sqlalchemy import func, select

    from oddish.db.connection import get_session
    from oddish.db.models import TaskModel, TrialModel

    async with get_session() as session:
        tasks = (
            await session.execute(
                select(func.count())
                .select_from(TaskModel)
                .where(TaskModel.experiment_id == experiment)
            )
        ).scalar_one()
        trials = (
            await session.execute(
                select(func.count())
                .select_from(TrialModel)
                .join(TaskModel, TaskModel.id == TrialModel.task_id)
                .where(TaskModel.experiment_id == experiment)
            )
        ).scalar_one()
    return tasks, trials


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=10, help="trials per task")
    args = parser.parse_args()
    os.environ.setdefault("HARBOR_TELEMETRY", "0")
    with tempfile.TemporaryDirectory(prefix="oddish-bench-") as tmp:
        work = Path(tmp)
        tasks_dir = make_tasks(work, args.tasks)
        # Everything the API stores stays in this temporary home, deleted at the end.
        home = {"ODDISH_HOME": str(work / "home"), "ODDISH_STORAGE_DIR": str(work / "storage")}
        async with embedded_stack(work, n_workers=0, limits={}, settings=home):
            api, url = start_api(work)
            try:
                command = [
                    sys.executable,
                    "-m",
                    "oddish",
                    "run",
                    str(tasks_dir),
                    "-a",
                    "oracle",
                    "--env",
                    "local",
                    "--n-trials",
                    str(args.trials),
                    "--json",
                ]
                api_cpu = cpu_sec(api.pid)
                others = services_cpu_sec(work, api.pid)
                cli_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                done = subprocess.run(
                    command,
                    env={**os.environ, "ODDISH_API_URL": url},
                    capture_output=True,
                    text=True,
                )
                wall = time.perf_counter() - started
                api_cpu = cpu_sec(api.pid) - api_cpu
                temporal, postgres = (
                    after - before
                    for after, before in zip(services_cpu_sec(work, api.pid), others, strict=True)
                )
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cli_cpu = after.ru_utime + after.ru_stime - cli_cpu.ru_utime - cli_cpu.ru_stime
                if done.returncode != 0:
                    raise RuntimeError(f"oddish run failed: {done.stderr.strip()}")
                answer = json.loads(done.stdout)
                api_rss = rss_mb(api.pid)
            finally:
                api.terminate()
                api.wait(timeout=30)
            tasks, trials = await recorded(answer["experiment"])
    expected = args.tasks * args.trials
    print(f"tasks={args.tasks} trials per task={args.trials}")
    print(f"oddish run wall time : {wall:7.2f} s")
    print(f"tasks/s              : {args.tasks / wall:7.1f}")
    print(f"CPU of the API / CLI : {api_cpu:7.2f} s / {cli_cpu:.2f} s")
    print(f"CPU of Temporal      : {temporal:7.2f} s")
    print(f"CPU of Postgres      : {postgres:7.2f} s")
    print(f"API RSS afterwards   : {api_rss:7.1f} MB")
    print(f"load average (1 min) : {os.getloadavg()[0]:7.2f} (other work on this machine skews it)")
    print(
        f"recorded             : {tasks} tasks, {trials} trials (expected {args.tasks}, {expected})"
    )
    if (tasks, trials) != (args.tasks, expected) or answer["total_trials"] != expected:
        raise SystemExit("the submission lost or doubled tasks")


if __name__ == "__main__":
    asyncio.run(main())
