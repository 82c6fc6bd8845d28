"""Example tasks x {oracle, nop} x 2 trials through workers, Temporal, Postgres and Harbor."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from temporalio.client import Client

from helpers import check_history, local, submit, wait_for_task
from oddish.storage import get_storage
from s3_server import s3_server_fixture, using_s3  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(600)

# task -> agent -> (reward, outcome, extra rewards expected in the dict)
EXPECTED = {
    "hello-pass": {"oracle": (1.0, "success", {}), "nop": (0.0, "task_failure", {})},
    "partial-credit": {
        "oracle": (0.5, "partial", {"correctness": 1.0, "style": 0.0}),
        "nop": (0.0, "task_failure", {"correctness": 0.0, "style": 0.0}),
    },
    "always-fail": {"oracle": (0.0, "task_failure", {}), "nop": (0.0, "task_failure", {})},
}


@pytest.fixture(params=["local", "s3"])
def storage_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Settings of the store for this process and its workers: the default local directory,
    then once more with S3 (moto's server)."""
    if request.param == "local":
        yield {}
        return
    with using_s3(request.getfixturevalue("s3_server"), prefix="e2e/") as env:
        yield env


async def test_example_tasks_end_to_end(
    start_worker, temporal_client: Client, storage_env: dict[str, str]
) -> None:
    worker = start_worker(**storage_env)
    # Workflows are taken up once the trial process serves its queue, not before.
    log = worker.log()
    assert log.index("trial processes ready after") < log.index("runner: worker on task queue")
    task_ids = {
        name: await submit(temporal_client, name, local("oracle", 2), local("nop", 2))
        for name in EXPECTED
    }
    tasks = dict(
        zip(
            task_ids,
            await asyncio.gather(
                *(wait_for_task(temporal_client, task_id) for task_id in task_ids.values())
            ),
            strict=True,
        )
    )

    await check_history(temporal_client, task_ids["partial-credit"], "completed")
    store = get_storage()
    assert store.name == ("s3" if storage_env else "local")
    for name, task in tasks.items():
        assert task["status"] == "completed", task
        assert len(task["trials"]) == 4
        for trial in task["trials"]:
            reward, outcome, extra = EXPECTED[name][trial["agent"]]
            assert trial["status"] == "success", trial
            assert trial["reward"] == pytest.approx(reward), trial
            assert trial["outcome"] == outcome
            assert trial["rewards"]["reward"] == pytest.approx(reward)
            for key, value in extra.items():
                assert trial["rewards"][key] == pytest.approx(value)
            assert [a["status"] for a in trial["attempts"]] == ["success"]
            assert trial["analysis"]["classification"] == outcome
            assert trial["timings"]["agent_execution"]["started_at"]
            assert trial["started_at"] <= trial["finished_at"]
            assert trial["harbor_config"]["agent"]["name"] == trial["agent"]
            # The attempt's output is in the store this run uses.
            stored = [i.key for i in store.list(trial["harbor_trial_dir"])]
            assert f"{trial['harbor_trial_dir']}result.json" in stored, stored

        by_agent = task["verdict"]["details"]["by_agent_model"]
        for agent in ("oracle", "nop"):
            reward = EXPECTED[name][agent][0]
            stats = by_agent[f"{agent}/-"]
            assert stats["trials"] == 2
            assert stats["mean_reward"] == pytest.approx(reward)
            assert stats["pass_rate"] == (1.0 if reward >= 1.0 else 0.0)

    # Found in Temporal by our search attributes, completed.
    task_id = task_ids["partial-credit"]
    for _ in range(50):
        found = [
            w
            async for w in temporal_client.list_workflows(
                f'OddishTask = "{task_id}" AND OddishStatus = "completed"'
                ' AND ExecutionStatus = "Completed"'
            )
        ]
        if found:
            break
        await asyncio.sleep(0.2)
    assert [w.id for w in found] == [f"task/{task_id}"]
