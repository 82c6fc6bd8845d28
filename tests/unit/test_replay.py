"""Recorded histories of every kind of task run replay against the installed workflow code.

A workflow change that would make a running workflow take a different path fails here: put it
behind ``workflow.patched``. Record new histories with ODDISH_RECORD_HISTORIES=1 (see README).
"""

from __future__ import annotations

import json

import pytest
from temporalio.client import WorkflowHistory

from helpers import HISTORIES, WORKFLOW_IDS
from oddish.replay import replay_history

RECORDED = sorted(p for p in HISTORIES.glob("*.json") if p != WORKFLOW_IDS)
RAN_AS: dict[str, str] = json.loads(WORKFLOW_IDS.read_text()) if WORKFLOW_IDS.exists() else {}
# What the recorded histories must cover: each path the workflow can take.
SCENARIOS = {
    "completed",
    "failed-trials",
    "cancelled",
    "worker-killed",
    "retry-finished",
    "retry-running",
    # The judge's path (JUDGE_PATCH): analyses and verdict on the judge's task queue.
    "judged",
    # A large task (BATCH_PATCH): its trials in TrialBatchWorkflow children, each replayed too.
    "batched",
    "batched-batch-0",
    # Status records as local activities (LOCAL_RECORDS_PATCH): a cancel and a retry update.
    "local-records-cancelled",
    "local-records-retry-running",
    # Slot requests as local activities (LOCAL_SLOT_REQUESTS_PATCH): a task's first workflow
    # task puts its trials in line; a retry of a running and of a finished task, a cancel.
    "local-slot-requests-completed",
    "local-slot-requests-retry-running",
    "local-slot-requests-retry-finished",
    "local-slot-requests-cancelled",
    # Slots handed over (HAND_OVER_PATCH): a finishing trial's outcome carries the next trial's
    # grant, which starts in the same workflow task.
    "hand-over-completed",
    # Slot requests return the grants of the slots free at once (GRANT_ON_REQUEST_PATCH): as a
    # task's first step (a local activity), and as an activity of its own (more trials).
    "grant-on-request-completed",
    "grant-on-request-wide-completed",
    # Slot lanes (SLOT_LANES_PATCH): a trial's activity runs the trials its slot is handed to.
    "slot-lanes-completed",
    "slot-lanes-worker-killed",
}


def test_every_scenario_has_a_recorded_history() -> None:
    recorded = {path.name.rsplit("-run", 1)[0] for path in RECORDED}
    assert recorded >= SCENARIOS, f"missing: {SCENARIOS - recorded}"


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays(path) -> None:
    history = WorkflowHistory.from_json(
        RAN_AS.get(path.stem, f"task/{path.stem}"), path.read_text()
    )
    assert await replay_history(history) is None


async def test_a_history_the_code_would_not_make_fails_to_replay() -> None:
    """The check can fail: a recorded step the code never takes is caught."""
    recorded = (HISTORIES / "completed-run1.json").read_text()
    assert '"record_task_status"' in recorded
    tampered = recorded.replace('"record_task_status"', '"record_task_state"', 1)
    failure = await replay_history(WorkflowHistory.from_json("task/tampered", tampered))
    assert failure is not None and "record_task_state" in failure
