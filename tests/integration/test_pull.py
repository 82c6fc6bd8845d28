"""``oddish pull`` against a real API, worker, Postgres and Temporal: what it writes is Harbor's
own job layout, which Harbor's viewer scans."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harbor.viewer.scanner import JobScanner
from temporalio.client import Client

from helpers import EXAMPLES, api_on_own_queue, local, submit, wait_for_task
from oddish.storage.keys import validate_key

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def api_with_worker(oddish_env: dict[str, str], work_dir: Path, migrated: None) -> Iterator[str]:
    with api_on_own_queue(oddish_env, work_dir, "pull") as (url, queue):
        os.environ["ODDISH_TEMPORAL_TASK_QUEUE"] = queue  # submissions from this process go there
        yield url
        os.environ.pop("ODDISH_TEMPORAL_TASK_QUEUE", None)


def pull(api: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ODDISH_API_KEY"}
    env.update(ODDISH_API_URL=api, COLUMNS="250", HARBOR_TELEMETRY="0")
    return subprocess.run(
        [sys.executable, "-m", "oddish", "pull", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def pulled_json(api: str, *args: str, cwd: Path | None = None) -> dict[str, Any]:
    result = pull(api, *args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def files_under(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


async def test_pull_a_task_and_an_experiment_in_harbors_job_layout(
    api_with_worker: str, temporal_client: Client, tmp_path: Path
) -> None:
    import oddish.config

    oddish.config.get_settings.cache_clear()
    experiment = f"pull-{secrets.token_hex(3)}"
    hello = await submit(
        temporal_client,
        "hello-pass",
        local("oracle", 2),
        local("nop"),
        run_analysis=False,
        experiment_id=experiment,
    )
    partial = await submit(
        temporal_client,
        "partial-credit",
        local("oracle"),
        run_analysis=False,
        experiment_id=experiment,
    )
    tasks = {t: await wait_for_task(temporal_client, t) for t in (hello, partial)}
    api = api_with_worker

    # A task: its trials, its job files, its own files.
    out = tmp_path / "one-task"
    summary = pulled_json(api, hello, "-o", str(out))
    assert summary["kind"] == "task" and summary["trials_pulled"] == 3
    assert summary["not_finished"] == 0 and summary["problems"] == []
    scanner = JobScanner(out)
    assert scanner.list_jobs() == [hello]
    assert sorted(scanner.list_trials(hello)) == sorted(t["id"] for t in tasks[hello]["trials"])
    rewards = {}
    for trial in tasks[hello]["trials"]:
        result = scanner.get_trial_result(hello, trial["id"])
        assert result is not None and scanner.get_trial_config(hello, trial["id"]) is not None
        assert result.verifier_result is not None
        rewards[trial["id"]] = result.verifier_result.rewards["reward"]
        assert rewards[trial["id"]] == trial["reward"]
        trial_dir = out / hello / trial["id"]
        assert (trial_dir / "trial.log").is_file() and (trial_dir / "verifier").is_dir()
    job_config = scanner.get_job_config(hello)
    job_result = scanner.get_job_result(hello)
    assert job_config is not None and job_result is not None
    assert sorted(a.name for a in job_config.agents) == ["nop", "oracle"]
    assert job_result.n_total_trials == 3
    assert job_result.stats.n_completed_trials == 3 and job_result.stats.n_errored_trials == 0
    assert job_result.finished_at is not None
    task_files = out / hello / "task"
    for rel in ("instruction.md", "task.toml", "tests/test.sh"):
        assert (task_files / rel).read_bytes() == (EXAMPLES / "hello-pass" / rel).read_bytes()

    # Again: nothing fetched, nothing lost.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = pulled_json(api, hello, "-o", str(out))
    assert again["trials_pulled"] == 0 and again["files"] == 0 and again["unchanged"] == 3
    assert {p for p in out.rglob("*") if p.is_file()} == set(before)

    # A file removed locally comes back once its trial is pulled afresh (state forgotten).
    first = tasks[hello]["trials"][0]["id"]
    (out / hello / first / "trial.log").unlink()
    (out / hello / ".oddish-pull.json").unlink()
    refilled = pulled_json(api, hello, "-o", str(out))
    assert refilled["files"] == 1 and (out / hello / first / "trial.log").is_file()

    # An experiment by name, into the default directory: one job per task.
    summary = pulled_json(api, experiment, cwd=tmp_path)
    assert summary["kind"] == "experiment" and summary["tasks"] == 2
    assert summary["trials_pulled"] == 4
    default = tmp_path / ".oddish" / experiment
    scanner = JobScanner(default)
    assert sorted(scanner.list_jobs()) == sorted([hello, partial])
    partial_trial = tasks[partial]["trials"][0]
    result = scanner.get_trial_result(partial, partial_trial["id"])
    assert result is not None and result.verifier_result is not None
    assert result.verifier_result.rewards["reward"] == pytest.approx(0.5)

    # One trial, only Harbor's records of it.
    lean = tmp_path / "lean"
    summary = pulled_json(api, first, "-o", str(lean), "--no-logs", "--no-files")
    assert summary["kind"] == "trial" and summary["trials_pulled"] == 1
    assert files_under(lean) == {
        f"{hello}/config.json",
        f"{hello}/result.json",
        f"{hello}/.oddish-pull.json",
        f"{hello}/{first}/config.json",
        f"{hello}/{first}/result.json",
    }
    assert JobScanner(lean).list_trials(hello) == [first]

    # Every path written is one a key could be: nothing outside the directory.
    for path in files_under(tmp_path):
        validate_key(path)

    missing = pull(api, "no-such-thing", "-o", str(tmp_path / "none"))
    assert missing.returncode == 1
    assert "no trial, task or experiment 'no-such-thing'" in missing.stderr
    assert not (tmp_path / "none").exists()


async def test_pull_watch_follows_trials_until_the_task_is_done(
    api_with_worker: str, temporal_client: Client, tmp_path: Path
) -> None:
    task_id = await submit(
        temporal_client,
        "sleep",
        local("oracle", 2, agent_env={"ODDISH_SLEEP_SECONDS": "6"}),
        run_analysis=False,
    )
    early = pulled_json(api_with_worker, task_id, "-o", str(tmp_path / "early"))
    assert early["not_finished"] == 2 and early["trials_pulled"] == 0

    started = time.monotonic()
    watched = pull(api_with_worker, task_id, "-o", str(tmp_path / "watched"), "--watch")
    assert watched.returncode == 0, watched.stderr
    assert "2 trials pulled" in watched.stdout
    assert f"harbor view {tmp_path / 'watched'}" in watched.stdout
    task = await wait_for_task(temporal_client, task_id, timeout=60)
    assert task["status"] == "completed"
    scanner = JobScanner(tmp_path / "watched")
    assert sorted(scanner.list_trials(task_id)) == sorted(t["id"] for t in task["trials"])
    print(f"pull --watch returned after {time.monotonic() - started:.1f}s")
