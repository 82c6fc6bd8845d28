"""The original Oddish's README (0.1.1), its examples run as written against the real stack: the
library's imports and calls, the worker's entry point, and the CLI lines a user of it types."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import EXAMPLES, serve_api
from oddish import __version__

pytestmark = pytest.mark.timeout(600)

HELLO = str(EXAMPLES / "hello-pass")


@pytest.fixture(scope="module")
def stack(oddish_env: dict[str, str], work_dir: Path, migrated: None) -> Iterator[dict[str, str]]:
    """The original's split deployment: an API without workers, and a worker started by the
    original's entry point (its compose file's command)."""
    queue = f"oddish-readme-{secrets.token_hex(4)}"
    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": queue}
    api, url = serve_api(env, work_dir / f"api-{queue}.log", "--no-workers")
    log_path = work_dir / f"worker-{queue}.log"
    with open(log_path, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "oddish.workers.queue.worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while "runner: worker on task queue" not in log_path.read_text(errors="replace"):
        assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
    yield {**env, "ODDISH_API_URL": url}
    worker.terminate()
    worker.wait(timeout=30)
    api.terminate()
    api.wait(timeout=30)


def oddish(
    env: dict[str, str], *args: str, stdin: str = "", timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    # The installed `oddish` command, as the README's lines call it.
    return subprocess.run(
        [str(Path(sys.executable).parent / "oddish"), *args],
        env={**env, "COLUMNS": "250"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_using_as_a_library(stack: dict[str, str]) -> None:
    """The README's "Using as a Library" block, each import as written, then the calls: the
    queue manager it creates serves a task the library submits (on a task queue of its own,
    so the stack's worker takes none of it)."""
    script = textwrap.dedent(
        """
        import asyncio, json, sys

        # Database models and sessions
        from oddish.db import TaskModel, TrialModel, get_session, init_db

        # Queue operations
        from oddish.queue import create_task, get_task_with_trials, get_queue_stats

        # Worker logic
        from oddish.workers.queue import create_queue_manager

        # Configuration
        from oddish.config import settings

        # Schemas
        from oddish.schemas import TaskSubmission, TrialSpec
        from oddish.schemas import TaskSweepSubmission, HarborConfig, AgentModelPair

        import oddish
        from oddish.temporal_gateway import connect


        async def main():
            await init_db()
            qm = await create_queue_manager()
            serving = asyncio.create_task(qm.run())
            task_id = await create_task(
                TaskSubmission(
                    task_path=sys.argv[1],
                    configs=[AgentModelPair(agent="oracle", environment="local", n_trials=2)],
                ),
                client=await connect(),
            )
            while (task := await get_task_with_trials(task_id))["status"] != "completed":
                assert task["status"] not in ("failed", "cancelled"), task["status"]
                await asyncio.sleep(0.5)
            async with get_session() as session:
                trial = await session.get(TrialModel, task["trials"][0]["id"])
                stored = await session.get(TaskModel, task_id)
            queues = await get_queue_stats()
            qm.shutdown.set()
            await serving
            harbor = HarborConfig(environment="local")
            body = TaskSweepSubmission(upload_id="u", configs=[{"agent": "oracle"}], harbor=harbor)
            return {
                "version": oddish.__version__,
                "database_url": settings.database_url,
                "rewards": [t["reward"] for t in task["trials"]],
                "rows": [trial.status, stored.name],
                "queues": queues,
                "sweep": body.model_dump()["harbor"]["environment"],
                "trial_agent": TrialSpec(agent="oracle").agent,
            }

        print(json.dumps(asyncio.run(main())))
        """
    )
    own_queue = {**stack, "ODDISH_TEMPORAL_TASK_QUEUE": f"oddish-library-{secrets.token_hex(4)}"}
    done = subprocess.run(
        [sys.executable, "-c", script, HELLO],
        env=own_queue,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["version"] == __version__
    assert answer["database_url"] == stack["ODDISH_DATABASE_URL"]
    assert answer["rewards"] == [1.0, 1.0] and answer["rows"] == ["success", "hello-pass"]
    assert isinstance(answer["queues"], dict)
    assert answer["sweep"] == "local" and answer["trial_agent"] == "oracle"


def test_cli_lines_of_the_original(stack: dict[str, str]) -> None:
    """`oddish --version`, run, `status -e`, `status -v`, `cancel -f`, `delete` with its prompt,
    `delete -e`, each against the worker started by the original's entry point."""
    version = oddish(stack, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"oddish {__version__}"

    ran = oddish(stack, "run", HELLO, "-a", "oracle", "--env", "local", "-q", "--background")
    assert ran.returncode == 0, ran.stderr
    submitted = oddish(stack, "status", "--json")
    task_id = json.loads(submitted.stdout)["tasks"][0]["id"]
    experiment = json.loads(submitted.stdout)["tasks"][0]["experiment_id"]

    watched = oddish(stack, "status", "-e", experiment, "--watch", "--interval", "0.5")
    assert watched.returncode == 0, watched.stderr
    assert task_id in watched.stdout and "1/1 tasks done" in watched.stdout
    task = httpx.get(f"{stack['ODDISH_API_URL']}/tasks/{task_id}").json()
    assert task["status"] == "completed" and task["trials"][0]["reward"] == 1.0

    verbose = oddish(stack, "status", "-v")
    assert verbose.returncode == 0 and "queue key" in verbose.stdout and task_id in verbose.stdout

    # A finished task: nothing left to stop, and no question asked.
    cancelled = oddish(stack, "cancel", task_id, "-f")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{task_id}: completed" in cancelled.stdout

    # `oddish delete <task_id>` asks first, as the original did; "n" keeps the task.
    kept = oddish(stack, "delete", task_id, stdin="n\n")
    assert kept.returncode != 0
    assert httpx.get(f"{stack['ODDISH_API_URL']}/tasks/{task_id}").status_code == 200
    deleted = oddish(stack, "delete", task_id, stdin="y\n")
    assert deleted.returncode == 0, deleted.stderr
    assert httpx.get(f"{stack['ODDISH_API_URL']}/tasks/{task_id}").status_code == 404

    gone = oddish(stack, "delete", "-e", experiment, stdin="y\n")
    assert gone.returncode == 0, gone.stderr
    assert httpx.get(f"{stack['ODDISH_API_URL']}/experiments/{experiment}").status_code == 404


def test_api_option_and_default_api_url(stack: dict[str, str]) -> None:
    """`--api URL` on a command, and ODDISH_DEFAULT_API_URL when ODDISH_API_URL is unset."""
    url = stack["ODDISH_API_URL"]
    elsewhere = {**stack, "ODDISH_API_URL": "http://127.0.0.1:9"}
    assert oddish(elsewhere, "status").returncode == 1
    with_option = oddish(elsewhere, "status", "--json", "--api", url)
    assert with_option.returncode == 0, with_option.stderr
    assert "tasks" in json.loads(with_option.stdout)
    # A command group takes it too, before or after its subcommand.
    limits = oddish(elsewhere, "limits", "--json", "--api", url)
    assert limits.returncode == 0, limits.stderr
    assert "default" in json.loads(limits.stdout)
    for args in (("limits", "--api", url, "set"), ("limits", "set", "--api", url)):
        limit = oddish(elsewhere, *args, "test/api-option", "3", "--json")
        assert limit.returncode == 0, limit.stderr
        assert json.loads(limit.stdout)["limit"] == 3

    fallback = {k: v for k, v in stack.items() if k != "ODDISH_API_URL"}
    fallback["ODDISH_DEFAULT_API_URL"] = url
    assert oddish(fallback, "limits", "--json").returncode == 0


def test_upload_then_run_more_trials_of_a_task(stack: dict[str, str], tmp_path: Path) -> None:
    """`oddish upload` stores a task by content; `oddish run --task ID` runs more trials of a
    task's stored files, in its experiment."""
    first = oddish(stack, "upload", HELLO, "--json")
    again = oddish(stack, "upload", HELLO, "--json")
    assert first.returncode == 0, first.stderr
    one, two = json.loads(first.stdout)[0], json.loads(again.stdout)[0]
    assert one["name"] == "hello-pass" and two["upload_id"] == one["upload_id"] and two["reused"]

    ran = oddish(stack, "run", HELLO, "-a", "oracle", "--env", "local", "--json")
    source = json.loads(ran.stdout)
    more = oddish(
        stack,
        "run",
        "--task",
        source["tasks"][0]["id"],
        "-a",
        "oracle",
        "--env",
        "local",
        "--n-trials",
        "2",
        "--override-storage-mb",
        "512",
        "--json",
    )
    assert more.returncode == 0, more.stderr
    added = json.loads(more.stdout)
    assert added["experiment"] == source["experiment"] and added["total_trials"] == 2
    new_id = added["tasks"][0]["id"]
    assert new_id != source["tasks"][0]["id"]
    watched = oddish(stack, "status", new_id, "--watch", "--json", "--interval", "0.5")
    task = json.loads(watched.stdout)
    assert task["name"] == "hello-pass" and [t["reward"] for t in task["trials"]] == [1.0, 1.0]

    no_paths = oddish(stack, "run", HELLO, "--task", new_id)
    assert no_paths.returncode == 2 and re.search(r"give no PATH", no_paths.stderr)
    unknown = oddish(stack, "run", "--task", "task-nope", "-a", "oracle", "--env", "local")
    assert unknown.returncode == 1 and "task-nope" in unknown.stderr
