"""The command line tells the truth: each trial by its result, the scores per agent/model, exit
codes CI can rely on, a ``--watch`` that logs outside a terminal, ids whole, dashboard links.
Run as a subprocess (stdout a pipe, as in CI) against a real API, worker, Postgres, Temporal."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import EXAMPLES, api_on_own_queue

pytestmark = pytest.mark.timeout(600)

HELLO, ALWAYS_FAIL = (str(EXAMPLES / name) for name in ("hello-pass", "always-fail"))
LOCAL_ORACLE = ("--env", "local", "-a", "oracle")
WATCH_LINE = re.compile(r"^\d\d:\d\d:\d\d (task-\S+) (\S+) (\S+) · (.+)$")


@pytest.fixture(scope="module")
def api(oddish_env: dict[str, str], work_dir: Path, migrated: None) -> Iterator[str]:
    """One API for the module, with a worker in its process on a task queue of its own."""
    with api_on_own_queue(oddish_env, work_dir, "truth") as (url, _):
        yield url


def oddish(
    api_url: str, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ODDISH_API_KEY", "ODDISH_DASHBOARD_URL", "ODDISH_DEFAULT_DASHBOARD_URL")
    }
    environ.update(ODDISH_API_URL=api_url, COLUMNS="120", HARBOR_TELEMETRY="0", **env)
    return subprocess.run(
        [sys.executable, "-m", "oddish", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok_json(api_url: str, *args: str, **env: str) -> Any:
    result = oddish(api_url, *args, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def watch_lines(stdout: str) -> list[tuple[str, str, str, str]]:
    """The change lines of a non-terminal --watch: (task id, name, status, counts)."""
    return [m.groups() for m in map(WATCH_LINE.match, stdout.splitlines()) if m]  # type: ignore[misc]


def experiment_of(stdout: str) -> str:
    return re.search(r"to experiment (\S+)", stdout).group(1)  # type: ignore[union-attr]


def test_a_reward_of_0_is_failed_scores_fail_under_and_retry(api: str) -> None:
    run = oddish(
        api, "run", HELLO, ALWAYS_FAIL, *LOCAL_ORACLE, "--n-trials", "2", "--fail-under", "0.6"
    )
    # Every trial got a reward, but their mean (0.5) is under 0.6: exit 1, saying so.
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == "error: mean reward 0.500 is below --fail-under 0.6"
    experiment = experiment_of(run.stdout)
    assert f"dashboard: {api}/ui/experiments/{experiment}" in run.stdout

    # Not a terminal: one line per change, each ended, the output ended with a newline.
    assert run.stdout.endswith("\n")
    lines = watch_lines(run.stdout)
    by_task: dict[str, list[tuple[str, str, str]]] = {}
    for task_id, name, status, counts in lines:
        by_task.setdefault(task_id, []).append((name, status, counts))
    assert len(by_task) == 2
    for changes in by_task.values():
        assert all(a != b for a, b in itertools.pairwise(changes)), changes
    finals = {changes[-1][0]: changes[-1][1:] for changes in by_task.values()}
    assert finals == {
        "hello-pass": ("completed", "2 passed"),
        "always-fail": ("completed", "2 failed"),
    }
    assert "success" not in "".join(c for _, _, _, c in lines)

    # The scores per agent/model at the end: pass@1 2/4 with its Wilson interval, pass@2 (one
    # task always passes, one never), mean reward, no errors.
    table = run.stdout[run.stdout.index(f"scores of experiment {experiment}") :]
    row = next(line for line in table.splitlines() if "oracle/-" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == [
        "oracle/-",
        "2",
        "4",
        "4",
        "0.500 [0.150, 0.850]",
        "pass@2 0.500",
        "0.500",
        "0",
    ]

    # The same numbers in the API's experiment view, computed once on the server.
    view = httpx.get(f"{api}/experiments/{experiment}", params={"tasks_limit": 0}).json()
    scores = view["by_agent_model"]["oracle/-"]["scores"]
    assert scores["results"]["passed"] == 2 and scores["results"]["failed"] == 2
    assert scores["pass_at_1"]["low"] == pytest.approx(0.1500, abs=1e-4)
    assert scores["pass_at_k"] == [
        {"k": 1, "estimate": 0.5, "tasks": 2},
        {"k": 2, "estimate": 0.5, "tasks": 2},
    ]
    assert scores["mean_reward"] == 0.5 and scores["errored"] == 0

    # At 0.5 the run passes: every trial got a reward and the mean is not under the bar.
    again = oddish(api, "status", "--experiment", experiment, "--watch", "--fail-under", "0.5")
    assert again.returncode == 0, again.stderr
    assert "oracle/-" in again.stdout and again.stdout.endswith("\n")

    # A reward of 0 is `failed`, not `success`, and retry is offered for it.
    fail_id = next(t for t, changes in by_task.items() if changes[0][0] == "always-fail")
    task = ok_json(api, "status", fail_id, "--json")
    assert {t["result"] for t in task["trials"]} == {"failed"}
    assert {t["status"] for t in task["trials"]} == {"success"}  # ran to a score
    shown = oddish(api, "status", fail_id, "--wide")
    assert shown.returncode == 0, shown.stderr
    for trial in task["trials"]:
        # Whole, on one line, in a row that says failed.
        row = next(line for line in shown.stdout.splitlines() if trial["id"] in line)
        assert " failed " in row and " success " not in row
    assert f"oddish retry {fail_id}" in shown.stdout

    trial_id = task["trials"][0]["id"]
    retried = ok_json(api, "retry", trial_id, "--json")
    assert retried["retried"] == [trial_id]
    watched = oddish(api, "status", fail_id, "--watch", "--json", "--interval", "0.5")
    # Still a reward of 0, but a reward: exit 0.
    assert watched.returncode == 0, watched.stderr
    trial = next(t for t in json.loads(watched.stdout)["trials"] if t["id"] == trial_id)
    assert trial["result"] == "failed" and [a["run_number"] for a in trial["attempts"]] == [1, 2]

    hello_id = next(t for t in by_task if t != fail_id)
    passed = ok_json(api, "status", hello_id, "--json")["trials"][0]["id"]
    refused = oddish(api, "retry", passed)
    assert refused.returncode == 1 and f"{passed} has passed" in refused.stderr


def test_an_error_exits_1_and_json_links_the_dashboard(api: str, tmp_path: Path) -> None:
    broken = tmp_path / "no-reward"
    shutil.copytree(EXAMPLES / "hello-pass", broken)
    # The verifier runs and writes no reward: a verifier error, no reward for the agent.
    (broken / "tests" / "test.sh").write_text("#!/bin/bash\necho 'no reward today'\n")
    submitted = ok_json(
        api,
        "run",
        str(broken),
        HELLO,
        *LOCAL_ORACLE,
        "--json",
        ODDISH_DASHBOARD_URL="https://dash.example/oddish/",
        ODDISH_DEFAULT_DASHBOARD_URL="https://ignored.example",
    )
    experiment = submitted["experiment"]
    assert submitted["experiment_url"] == f"https://dash.example/oddish/experiments/{experiment}"
    for task in submitted["tasks"]:
        assert task["url"] == f"https://dash.example/oddish/tasks/{task['id']}"
    broken_id = submitted["tasks"][0]["id"]

    watched = oddish(api, "status", "--experiment", experiment, "--watch", "--interval", "0.5")
    assert watched.returncode == 1, watched.stderr
    assert watched.stderr.strip() == "error: 1 of 2 trial(s) got no reward: 1 error"
    assert watched.stdout.endswith("\n")
    finals = {
        task_id: (status, counts) for task_id, _, status, counts in watch_lines(watched.stdout)
    }
    assert finals[broken_id] == ("completed", "1 error")
    assert "verifier_error" in watched.stdout  # the kind of error, in the scores table

    as_json = oddish(api, "status", "--experiment", experiment, "--watch", "--json")
    assert as_json.returncode == 1
    tasks = {t["id"]: t for t in json.loads(as_json.stdout)["tasks"]}
    assert [t["result"] for t in tasks[broken_id]["trials"]] == ["error"]
    assert tasks[broken_id]["scores"]["errors"]["verifier_error"] == 1

    view = httpx.get(f"{api}/experiments/{experiment}", params={"tasks_limit": 0}).json()
    overall = view["overall"]["scores"]
    # The error is counted apart, not as a reward of 0: the mean is hello-pass's 1.0.
    assert overall["errored"] == 1 and overall["scored"] == 1 and overall["mean_reward"] == 1.0

    # Without a dashboard setting, the API's own pages.
    links = ok_json(api, "run", HELLO, *LOCAL_ORACLE, "--json", "-E", experiment)
    assert links["experiment_url"] == f"{api}/ui/experiments/{experiment}"
    assert links["tasks"][0]["url"] == f"{api}/ui/tasks/{links['tasks'][0]['id']}"


def test_fail_under_needs_a_watch(api: str) -> None:
    result = oddish(api, "status", "--fail-under", "0.5")
    assert result.returncode == 2 and "add --watch" in result.stderr
    result = oddish(api, "run", HELLO, *LOCAL_ORACLE, "--json", "--fail-under", "0.5")
    assert result.returncode == 2 and result.stdout == ""
