"""``oddish run`` of many task directories: submitted side by side, answered in the order given,
all in one experiment, and a failure told once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import EXAMPLES

pytestmark = pytest.mark.timeout(300)

N_TASKS = 20  # more than the CLI submits at once


def oddish(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ODDISH_API_KEY"}
    env.update(ODDISH_API_URL=api_url, COLUMNS="250", HARBOR_TELEMETRY="0")
    return subprocess.run(
        [sys.executable, "-m", "oddish", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def make_tasks(root: Path, n: int) -> list[str]:
    names = [f"t{i:02d}-{'abcdefghij'[i % 10]}" for i in range(n)]
    for i, name in enumerate(names):
        shutil.copytree(EXAMPLES / "hello-pass", root / name)
        (root / name / "instruction.md").write_text(f"task {i}\n")
    return names


def test_many_tasks_keep_their_order_and_one_experiment(api: str, tmp_path: Path) -> None:
    names = make_tasks(tmp_path, N_TASKS)
    # Given in another order than the directory's: the answer follows the command line.
    given = [*names[N_TASKS // 2 :], *names[: N_TASKS // 2]]
    result = oddish(
        api,
        "run",
        *(str(tmp_path / n) for n in given),
        "-a",
        "oracle",
        "--env",
        "local",
        "--n-trials",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["total_trials"] == 3 * N_TASKS and len(answer["tasks"]) == N_TASKS
    shown = [httpx.get(f"{api}/tasks/{t['id']}").json() for t in answer["tasks"]]
    assert [t["name"] for t in shown] == given
    assert {t["experiment_id"] for t in shown} == {answer["experiment"]}
    assert all(
        len(t["trials"]) == 3 == a["trials_count"]
        for t, a in zip(shown, answer["tasks"], strict=True)
    )


def test_a_refused_task_among_many_is_told_once(api: str, tmp_path: Path) -> None:
    names = make_tasks(tmp_path, N_TASKS)
    broken = tmp_path / names[N_TASKS // 2]
    (broken / "task.toml").write_text("this is [not toml\n")
    result = oddish(api, "run", str(tmp_path), "-a", "oracle", "--env", "local", "--json")
    assert result.returncode == 1 and result.stdout == "", result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "from POST /tasks/run" in errors[0], result.stderr
    told = re.fullmatch(
        rf"(\d+) of {N_TASKS} tasks were submitted before the error, to experiment (\S+)",
        lines[-1],
    )
    assert told is not None and "Traceback" not in result.stderr, result.stderr
    # Those under way when it failed were let finish, each once; none after it was started.
    submitted, experiment = int(told.group(1)), told.group(2)
    listed = httpx.get(f"{api}/tasks", params={"experiment": experiment, "limit": 100}).json()
    assert listed["total"] == submitted
    assert broken.name not in {t["name"] for t in listed["tasks"]}
    assert submitted < N_TASKS


def test_a_new_experiment_named_on_the_command_line_is_made_once(api: str, tmp_path: Path) -> None:
    # Every task is submitted at once: the first few race to create the experiment.
    names = make_tasks(tmp_path, N_TASKS)
    experiment = f"cli-new-{tmp_path.name}"[:64]
    result = oddish(
        api, "run", str(tmp_path), "-a", "oracle", "--env", "local", "-E", experiment, "--json"
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["experiment"] == experiment
    listed = httpx.get(f"{api}/tasks", params={"experiment": experiment, "limit": 100}).json()
    assert sorted(t["name"] for t in listed["tasks"]) == names
