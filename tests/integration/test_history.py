"""A task of 300 trials keeps its workflow history well under Temporal's 10,240-event warning."""

from __future__ import annotations

import json

import pytest
from temporalio.client import Client

from helpers import local, submit, unique_key, wait_for_task
from oddish.workflows import workflow_id_for_task

pytestmark = pytest.mark.timeout(1200)
HISTORY_WARNING = 10_240


async def test_three_hundred_trials_history_stays_small(
    start_worker, temporal_client: Client
) -> None:
    key = unique_key("wide")
    start_worker("--n-concurrent", json.dumps({key: 12}))
    task_id = await submit(temporal_client, "hello-pass", local("nop", n_trials=300, model=key))
    task = await wait_for_task(temporal_client, task_id, timeout=1100)

    assert task["status"] == "completed"
    assert len(task["trials"]) == 300
    assert all(t["status"] == "success" and t["reward"] == 0.0 for t in task["trials"])
    assert task["verdict"]["details"]["overall"]["trials"] == 300

    history = await temporal_client.get_workflow_handle(
        workflow_id_for_task(task_id)
    ).fetch_history()
    events = len(history.events)
    print(f"history of a 300-trial task: {events} events")
    assert events < HISTORY_WARNING * 0.75
