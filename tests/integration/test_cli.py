"""The ``oddish`` command line, run as a subprocess against a real API, worker, Postgres and
Temporal."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import EXAMPLES, api_on_own_queue
from oddish.embedded import free_port

pytestmark = pytest.mark.timeout(600)

HELLO, PARTIAL, SLEEP = (str(EXAMPLES / name) for name in ("hello-pass", "partial-credit", "sleep"))
LOCAL_ORACLE = ("--env", "local", "-a", "oracle")
TRIAL_FIELDS = {
    "id",
    "status",
    "reward",
    "rewards",
    "error",
    "attempts",
    "started_at",
    "finished_at",
}


@pytest.fixture(scope="module")
def api(oddish_env: dict[str, str], work_dir: Path, migrated: None) -> Iterator[str]:
    """One API for the module, with a worker in its process on a task queue of its own."""
    with api_on_own_queue(oddish_env, work_dir, "cli") as (url, _):
        yield url


def oddish(
    api_url: str, *args: str, timeout: float = 120, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ODDISH_API_KEY"}
    # Wide, so that a usage error's reason stays on one line of Typer's error box.
    env.update(ODDISH_API_URL=api_url, COLUMNS="250", HARBOR_TELEMETRY="0")
    return subprocess.run(
        [sys.executable, "-m", "oddish", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok_json(api_url: str, *args: str, timeout: float = 120) -> Any:
    result = oddish(api_url, *args, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(
    api_url: str, task_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = ok_json(api_url, "status", task_id, "--json")
        if done(task):
            return task
        assert time.monotonic() < deadline, f"task {task_id} never got there: {task['status']}"
        time.sleep(0.5)


def running(task: dict[str, Any]) -> bool:
    return any(t["status"] == "running" for t in task["trials"])


def task_count(api_url: str) -> int:
    return httpx.get(f"{api_url}/tasks", params={"limit": 1}).json()["total"]


def test_help_explains_every_command() -> None:
    top = oddish("http://unused", "--help")
    assert top.returncode == 0
    for command in (
        "run",
        "status",
        "cancel",
        "retry",
        "clean",
        "pull",
        "analyze",
        "limits",
        "up",
        "replay",
    ):
        assert command in top.stdout
        assert oddish("http://unused", command, "--help").returncode == 0
    assert oddish("http://unused", "limits", "set", "--help").returncode == 0


def test_run_json_then_watch_and_status(api: str) -> None:
    submitted = ok_json(api, "run", HELLO, PARTIAL, *LOCAL_ORACLE, "--n-trials", "2", "--json")
    assert set(submitted) == {"experiment", "experiment_url", "total_trials", "tasks"}
    assert submitted["total_trials"] == 4 and len(submitted["tasks"]) == 2
    for task in submitted["tasks"]:
        assert set(task) == {"id", "trials_count", "url"} and task["trials_count"] == 2
        assert task["url"].endswith(f"/tasks/{task['id']}")
    experiment = submitted["experiment"]
    ids = [t["id"] for t in submitted["tasks"]]

    started = time.monotonic()
    watched = oddish(
        api, "status", "--experiment", experiment, "--watch", "--interval", "0.5", timeout=300
    )
    print(f"status --watch returned after {time.monotonic() - started:.1f}s")
    assert watched.returncode == 0, watched.stderr
    assert all(i in watched.stdout for i in ids) and "2/2 tasks done" in watched.stdout

    rewards = {}
    for task_id in ids:
        task = wait_for(api, task_id, lambda t: t["status"] == "completed")
        assert task["verdict"]["status"] == "success" and task["experiment_id"] == experiment
        for trial in task["trials"]:
            assert set(trial) >= TRIAL_FIELDS
            assert trial["status"] == "success" and trial["error"] is None
            assert len(trial["attempts"]) == 1
            assert datetime.fromisoformat(trial["started_at"]) <= datetime.fromisoformat(
                trial["finished_at"]
            )
        rewards[task["name"]] = sorted(t["reward"] for t in task["trials"])
    assert rewards == {"hello-pass": [1.0, 1.0], "partial-credit": [0.5, 0.5]}

    listed = ok_json(api, "status", "--experiment", experiment, "--json")
    assert listed["experiment"] == experiment
    assert sorted(t["id"] for t in listed["tasks"]) == sorted(ids)
    assert set(ids) <= {t["id"] for t in ok_json(api, "status", "--json")["tasks"]}
    shown = oddish(api, "status", ids[0])
    assert shown.returncode == 0 and "trials of" in shown.stdout and "completed" in shown.stdout

    replayed = ok_json(api, "replay", ids[0], "--json")
    assert replayed["deterministic"] is True and replayed["task_id"] == ids[0]
    unknown = oddish(api, "replay", "task-nope")
    assert unknown.returncode == 1 and "no workflow history" in unknown.stderr


def test_sweep_file_runs_two_agents_on_two_tasks(api: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "agents:\n"
        "  - name: oracle\n"
        "  - name: nop\n"
        f"path: {EXAMPLES}\n"
        'task_names: ["hello-*", "partial-*"]\n'
        "environment: local\n"
        "priority: high\n"
    )
    result = oddish(api, "run", "-c", str(sweep), "--background")
    assert result.returncode == 0, result.stderr
    assert "submitted 2 task(s), 4 trial(s)" in result.stdout
    experiment = re.search(r"oddish status --experiment (\S+) --watch", result.stdout).group(1)

    tasks = ok_json(
        api,
        "status",
        "--experiment",
        experiment,
        "--watch",
        "--json",
        "--interval",
        "0.5",
        timeout=300,
    )["tasks"]
    assert sorted(t["name"] for t in tasks) == ["hello-pass", "partial-credit"]
    assert all(t["status"] == "completed" and t["priority"] == 10 for t in tasks)
    oracle_rewards = {}
    for task in tasks:
        assert sorted(t["agent"] for t in task["trials"]) == ["nop", "oracle"]
        oracle_rewards[task["name"]] = next(
            t["reward"] for t in task["trials"] if t["agent"] == "oracle"
        )
    assert oracle_rewards == {"hello-pass": 1.0, "partial-credit": 0.5}


def test_limits_set_then_shown(api: str) -> None:
    key = f"test/cli-{secrets.token_hex(3)}"
    result = oddish(api, "limits", "set", key, "3")
    assert result.returncode == 0 and f"limit of {key} set to 3" in result.stdout
    assert ok_json(api, "limits", "--json")["queues"][key]["limit"] == 3
    assert key in oddish(api, "limits").stdout
    assert oddish(api, "limits", "set", key, "0").returncode == 2


def test_cancel_a_running_task_then_clean_it(api: str) -> None:
    submitted = ok_json(
        api, "run", SLEEP, *LOCAL_ORACLE, "--ae", "ODDISH_SLEEP_SECONDS=60", "--json"
    )
    task_id = submitted["tasks"][0]["id"]
    wait_for(api, task_id, running, timeout=60)

    started = time.monotonic()
    cancelled = oddish(api, "cancel", "--experiment", submitted["experiment"])
    assert cancelled.returncode == 0 and f"{task_id}: cancelling" in cancelled.stdout
    task = wait_for(api, task_id, lambda t: t["status"] == "cancelled", timeout=60)
    print(f"cancel -> cancelled in {time.monotonic() - started:.1f}s")
    assert {t["status"] for t in task["trials"]} == {"cancelled"}

    declined = oddish(api, "clean", task_id, stdin="n\n")
    assert declined.returncode == 1 and ok_json(api, "status", task_id, "--json")["id"] == task_id
    cleaned = oddish(api, "clean", task_id, "--yes")
    assert cleaned.returncode == 0 and f"deleted task {task_id}" in cleaned.stdout
    gone = oddish(api, "status", task_id)
    assert gone.returncode == 1 and f"no task {task_id!r}" in gone.stderr
    assert "Traceback" not in gone.stderr


@pytest.mark.parametrize(
    ("args", "sweep", "reason"),
    [
        (["/no/such/task"], None, "/no/such/task does not exist"),
        ([str(EXAMPLES / "hello-pass" / "tests")], None, "(no task.toml)"),
        ([HELLO, "--ae", "NO_EQUALS_SIGN"], None, "'NO_EQUALS_SIGN' is not KEY=VALUE"),
        ([HELLO], "agents:\n  - name: oracle\n    modle: gpt\n", "agents[0].modle: unknown field"),
        ([HELLO], "agents:\n  - name: oracle\nretries: 3\n", "retries: unknown field"),
        (
            [HELLO],
            "agents:\n  - name: oracle\n    n_trials: 0\n",
            "agents[0].n_trials: Input should be greater than or equal to 1",
        ),
        (
            [HELLO],
            "agents:\n  - name: oracle\n    n_trials: many\n",
            "agents[0].n_trials: Input should be a valid integer",
        ),
        ([HELLO], "agents: [oracle\n", "not valid YAML"),
    ],
)
def test_bad_input_is_a_usage_error_and_submits_nothing(
    api: str, tmp_path: Path, args: list[str], sweep: str | None, reason: str
) -> None:
    before = task_count(api)
    if sweep is not None:
        (tmp_path / "sweep.yaml").write_text(sweep)
        args = [*args, "-c", str(tmp_path / "sweep.yaml")]
    result = oddish(api, "run", *args, "--env", "local", "--json")
    assert result.returncode == 2, result.stderr
    assert any(reason in line for line in result.stderr.splitlines()), result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert task_count(api) == before


def test_a_task_that_cannot_be_packed_is_one_clear_line(api: str, tmp_path: Path) -> None:
    task = tmp_path / "linked"
    shutil.copytree(EXAMPLES / "hello-pass", task)
    (task / "tests" / "dangling").symlink_to("/nonexistent/oddish-file")
    before = task_count(api)
    result = oddish(api, "run", str(task), *LOCAL_ORACLE, "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot pack task" in result.stderr and "dangling" in result.stderr, result.stderr
    assert result.stdout == "" and task_count(api) == before


def test_api_down_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["run", HELLO, *LOCAL_ORACLE, "--json"], ["limits"]):
        result = oddish(url, *args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip() == (
            f"error: cannot reach the oddish API at {url}; start it with `oddish up` or point "
            "ODDISH_API_URL at a running one"
        )


def test_unknown_dataset_says_so_without_a_traceback(api: str) -> None:
    result = oddish(api, "run", "-d", "no-such-dataset-for-oddish@0.0", *LOCAL_ORACLE)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "dataset registry could not be reached" in result.stderr
    assert "pass task directories instead" in result.stderr


def test_retry_a_cancelled_trial(api: str) -> None:
    submitted = ok_json(
        api, "run", SLEEP, *LOCAL_ORACLE, "--ae", "ODDISH_SLEEP_SECONDS=10", "--json"
    )
    task_id = submitted["tasks"][0]["id"]
    trial_id = wait_for(api, task_id, running, timeout=60)["trials"][0]["id"]
    assert oddish(api, "cancel", task_id).returncode == 0
    wait_for(api, task_id, lambda t: t["status"] == "cancelled", timeout=60)

    retried = ok_json(api, "retry", trial_id, "--json")
    assert retried["task_id"] == task_id and retried["retried"] == [trial_id]
    again = oddish(api, "retry", task_id)
    assert again.returncode == 1 and "nothing to retry" in again.stderr

    task = ok_json(api, "status", task_id, "--watch", "--json", "--interval", "0.5", timeout=180)
    assert task["status"] == "completed"
    assert task["trials"][0]["status"] == "success" and task["trials"][0]["reward"] == 1.0
    nothing = oddish(api, "retry", "--experiment", submitted["experiment"])
    assert nothing.returncode == 1 and "nothing to retry" in nothing.stderr
    assert oddish(api, "retry", "not-an-id").returncode == 2
