"""Retry of failed trials: only they run again, as new attempts, then analysis and verdict are
redone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from helpers import check_history, local, slot_rows, submit, unique_key, wait_for_task
from oddish import task_retry
from oddish.queue import get_task_with_trials
from oddish.replay import replay_task
from oddish.schemas import AgentRunConfig
from oddish.workflows import workflow_id_for_task

TESTS_DIR = Path(__file__).resolve().parents[1]
OUTAGE_ENV = "outage_environment:OutageEnvironment"


def outage(outage_file: Path, n_trials: int, model: str) -> AgentRunConfig:
    """Trials whose sandbox cannot start while ``outage_file`` exists."""
    return AgentRunConfig(
        agent="oracle",
        n_trials=n_trials,
        model=model,
        environment=OUTAGE_ENV,
        environment_kwargs={"outage_file": str(outage_file)},
    )


def by_id(task: dict) -> dict[str, dict]:
    return {t["id"]: t for t in task["trials"]}


async def wait_for_trials(task_id: str, done: callable, timeout: float = 120) -> dict:
    for _ in range(int(timeout * 5)):
        task = await get_task_with_trials(task_id)
        if done(task["trials"]):
            return task
        await asyncio.sleep(0.2)
    raise AssertionError(f"task {task_id} did not get there in {timeout}s: {task['trials']}")


async def test_retry_of_a_finished_task_reruns_only_its_two_failed_trials(
    start_worker, temporal_client: Client, tmp_path: Path
) -> None:
    key = unique_key("retry")
    outage_file = tmp_path / "outage"
    outage_file.touch()
    start_worker(PYTHONPATH=str(TESTS_DIR))
    task_id = await submit(
        temporal_client, "hello-pass", local(n_trials=4, model=key), outage(outage_file, 2, key)
    )
    before = await wait_for_task(temporal_client, task_id)
    failed = {t["id"] for t in before["trials"] if t["status"] == "failed"}
    assert before["status"] == "completed" and len(failed) == 2
    assert before["verdict"]["details"]["overall"]["trials"] == 6
    first_run = (
        await temporal_client.get_workflow_handle(workflow_id_for_task(task_id)).describe()
    ).run_id

    outage_file.unlink()
    assert sorted(await task_retry.retry_task(task_id, client=temporal_client)) == sorted(failed)
    after = await wait_for_task(temporal_client, task_id)

    assert after["status"] == "completed"
    old, new = by_id(before), by_id(after)
    for trial_id, trial in new.items():
        assert trial["status"] == "success" and trial["reward"] == 1.0
        if trial_id in failed:
            # Run 1's infra_error attempts stay in the history; run 2 is a new attempt.
            assert [(a["run_number"], a["status"]) for a in trial["attempts"]] == [
                *[(1, "infra_error")] * len(old[trial_id]["attempts"]),
                (2, "success"),
            ]
            assert trial["analysis"]["classification"] == "success"
        else:
            assert trial["attempts"] == old[trial_id]["attempts"], "a passed trial never runs again"
            assert trial["finished_at"] == old[trial_id]["finished_at"]
    verdict = after["verdict"]
    assert verdict["finished_at"] > before["verdict"]["finished_at"]
    assert verdict["details"]["overall"]["mean_reward"] == pytest.approx(1.0)
    assert await slot_rows(key) == 0

    # A new run of the same workflow id, and both runs replay against this code.
    handle = temporal_client.get_workflow_handle(workflow_id_for_task(task_id))
    assert (await handle.describe()).run_id != first_run
    report = await replay_task(task_id, temporal_client)
    assert len(report.runs) == 2 and report.deterministic, report.message
    await check_history(temporal_client, task_id, "retry-finished")

    with pytest.raises(task_retry.RetryRefused, match="no trials that did not pass"):
        await task_retry.retry_task(task_id, client=temporal_client)


async def test_retry_of_a_running_task_is_an_update_of_its_workflow(
    start_worker, temporal_client: Client, tmp_path: Path
) -> None:
    key = unique_key("retry-live")
    outage_file = tmp_path / "outage"
    outage_file.touch()
    start_worker(PYTHONPATH=str(TESTS_DIR))
    slow = local(n_trials=2, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "20"})
    task_id = await submit(temporal_client, "sleep", slow, outage(outage_file, 2, key))
    handle = temporal_client.get_workflow_handle(workflow_id_for_task(task_id))
    task = await wait_for_trials(
        task_id, lambda trials: sum(t["status"] == "failed" for t in trials) == 2
    )
    failed = {t["id"] for t in task["trials"] if t["status"] == "failed"}
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    run_id = (await handle.describe()).run_id

    # A trial still running cannot be retried; the refusal says why.
    running = next(t["id"] for t in task["trials"] if t["id"] not in failed)
    with pytest.raises(task_retry.RetryRefused, match="only finished trials that did not pass"):
        await task_retry.retry_task(task_id, client=temporal_client, trial_ids=[running])

    outage_file.unlink()
    retried = await asyncio.gather(
        task_retry.retry_task(task_id, client=temporal_client),
        task_retry.retry_task(task_id, client=temporal_client),
        return_exceptions=True,
    )
    # Sent twice at once: one retry is taken, the other refused (the trials are in line already).
    assert sorted(map(type, retried), key=str) == sorted([list, task_retry.RetryRefused], key=str)
    assert sorted(next(r for r in retried if isinstance(r, list))) == sorted(failed)

    final = await wait_for_task(temporal_client, task_id)
    assert (await handle.describe()).run_id == run_id, "the same run took the retry"
    history = await handle.fetch_history()
    assert (
        sum(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
            for e in history.events
        )
        == 1
    )
    assert final["status"] == "completed"
    for trial in final["trials"]:
        assert trial["status"] == "success"
        runs = [(a["run_number"], a["status"]) for a in trial["attempts"]]
        if trial["id"] in failed:
            assert runs[-1] == (2, "success") and set(runs[:-1]) == {(1, "infra_error")}
        else:
            assert runs == [(1, "success")]
    assert final["verdict"]["details"]["overall"]["mean_reward"] == pytest.approx(1.0)
    assert await slot_rows(key) == 0
    report = await replay_task(task_id, temporal_client)
    assert report.deterministic, report.message
    await check_history(temporal_client, task_id, "retry-running")


async def test_retry_of_a_cancelled_task_runs_its_cancelled_trials(
    start_worker, temporal_client: Client
) -> None:
    from oddish import task_control

    key = unique_key("retry-cancel")
    start_worker("--n-concurrent", f'{{"{key}": 1}}')
    sleepy = local(n_trials=3, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "1"})
    task_id = await submit(temporal_client, "sleep", sleepy)
    await wait_for_trials(task_id, lambda trials: any(t["status"] == "running" for t in trials))
    await task_control.cancel_task(task_id, client=temporal_client)
    cancelled = await wait_for_trials(
        task_id, lambda trials: all(t["status"] in ("success", "cancelled") for t in trials)
    )
    redo = {t["id"] for t in cancelled["trials"] if t["status"] == "cancelled"}
    assert redo

    assert set(await task_retry.retry_task(task_id, client=temporal_client)) == redo
    final = await wait_for_task(temporal_client, task_id)
    assert final["status"] == "completed"
    assert all(t["status"] == "success" for t in final["trials"])
    assert await slot_rows(key) == 0
