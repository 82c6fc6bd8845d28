"""Harbor outcomes are classified: task outcomes recorded at once, infrastructure failures
retried."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from temporalio.client import Client

from helpers import EXAMPLES, check_history, local, wait_for_task
from oddish.queue import create_task
from oddish.schemas import AgentRunConfig, TaskSubmission
from oddish.storage import get_storage

pytestmark = pytest.mark.timeout(600)
TESTS_DIR = Path(__file__).resolve().parents[1]


def task_variant(tmp_path: Path, source: str, replacements: dict[str, str]) -> Path:
    """A copy of an example task with some of its files replaced."""
    target = tmp_path / source
    shutil.copytree(EXAMPLES / source, target)
    for relative, content in replacements.items():
        path = target / relative
        path.write_text(content)
        path.chmod(0o755)
    return target


async def run(
    client: Client, task_path: Path, config: AgentRunConfig, history: str | None = None
) -> dict:
    task_id = await create_task(
        TaskSubmission(task_path=task_path, configs=[config]), client=client
    )
    task = await wait_for_task(client, task_id)
    assert task["status"] == "completed"
    if history:
        await check_history(client, task_id, history)
    [trial] = task["trials"]
    return trial


async def test_hanging_agent_is_an_agent_timeout_recorded_once(
    start_worker, temporal_client: Client
) -> None:
    start_worker()
    trial = await run(
        temporal_client,
        EXAMPLES / "sleep",
        local(
            agent_env={"ODDISH_SLEEP_SECONDS": "600"},
            agent_timeout_sec=2,
        ),
    )
    assert trial["status"] == "failed"
    assert trial["outcome"] == "agent_timeout"
    assert trial["error_type"] == "AgentTimeoutError"
    assert trial["reward"] == 0.0
    assert len(trial["attempts"]) == 1
    assert trial["analysis"]["classification"] == "agent_timeout"


async def test_verifier_without_reward_fails_with_that_reason_once(
    start_worker, temporal_client: Client, tmp_path: Path
) -> None:
    start_worker()
    task = task_variant(
        tmp_path,
        "hello-pass",
        {"tests/test.sh": "#!/bin/bash\necho 'checked, but wrote no reward'\n"},
    )
    trial = await run(temporal_client, task, local())
    assert trial["status"] == "failed"
    assert trial["outcome"] == "verifier_error"
    assert trial["error_type"] == "RewardFileNotFoundError"
    assert "reward" in trial["error_message"].lower()
    assert len(trial["attempts"]) == 1
    # Harbor's output is kept, in storage.
    assert get_storage().stat(trial["harbor_trial_dir"] + "result.json").size > 0


async def test_unstartable_environment_is_retried_then_failed(
    start_worker, temporal_client: Client
) -> None:
    start_worker(PYTHONPATH=str(TESTS_DIR), ODDISH_TRIAL_MAX_ATTEMPTS="3")
    trial = await run(
        temporal_client,
        EXAMPLES / "hello-pass",
        AgentRunConfig(
            agent="oracle",
            environment="unstartable_environment:UnstartableEnvironment",
        ),
        history="failed-trials",
    )
    assert trial["status"] == "failed"
    assert trial["outcome"] == "infrastructure_error"
    assert trial["error_type"] == "ConnectionError"
    assert "connection refused" in trial["error_message"]
    assert [a["status"] for a in trial["attempts"]] == ["infra_error"] * 3
    assert [a["temporal_attempt"] for a in trial["attempts"]] == [1, 2, 3]
    # Every attempt kept its own Harbor output, in storage.
    dirs = {a["harbor_trial_dir"] for a in trial["attempts"]}
    assert len(dirs) == 3 and all(list(get_storage().list(d)) for d in dirs)
