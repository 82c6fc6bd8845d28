"""A finishing trial hands its slot to the next trial in line of its own workflow, in the
statement that gives the slot back, and only when the slot invariants allow it: the next trial
in line (priority, then FIFO) must be of that workflow, and the key within its limit. The rows
are written directly and the statements run on Postgres; then one task runs through a real
worker, Temporal and Harbor."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from helpers import (
    check_history,
    intervals,
    local,
    max_overlap,
    open_test_attempt,
    running_task_row,
    slot_rows,
    submit,
    unique_key,
    wait_for_task,
)
from oddish.activities.records import fail_trial
from oddish.contracts import FailTrialInput, SlotGrant
from oddish.db import attempts, records, slots
from oddish.db.connection import autocommit_connection, get_engine, get_session
from oddish.db.models import ExperimentModel, TrialModel
from oddish.statuses import AttemptStatus, JobStatus, OutcomeKind
from oddish.workflows.task_workflow import LOCAL_SLOT_REQUEST_MAX

pytestmark = pytest.mark.timeout(300)

MANAGER = uuid.uuid4()
SUCCESS = records.TrialResultFields(
    status=JobStatus.SUCCESS, outcome=OutcomeKind.SUCCESS, reward=1.0
)


async def _trials(key: str, n: int) -> tuple[str, list[str]]:
    """A task of ``n`` trials of queue key ``key``, recorded; its workflow id and trial ids."""
    name = f"hand-over-{os.getpid()}-{time.monotonic_ns()}"
    task_id = f"{name}-task"
    trial_ids = [f"{name}-trial-{i}" for i in range(n)]
    async with get_session() as session:
        session.add(ExperimentModel(id=name, name=name))
        await session.flush()
        session.add(running_task_row(task_id, name))
        await session.flush()
        for index, trial_id in enumerate(trial_ids):
            session.add(
                TrialModel(
                    id=trial_id,
                    task_id=task_id,
                    index=index,
                    agent="oracle",
                    queue_key=key,
                    environment="local",
                    spec={},
                    status="queued",
                    run_number=1,
                )
            )
        await session.commit()
    return f"task/{task_id}", trial_ids


async def _in_line(workflow_id: str, trial_ids: list[str], key: str, priority: int = 0) -> None:
    async with get_engine().begin() as conn:
        await slots.enqueue(
            conn,
            trials=[(t, key) for t in trial_ids],
            workflow_id=workflow_id,
            priority=priority,
            run_number=1,
        )


async def _limit(key: str, limit: int) -> None:
    """The key's own limit: whatever default ('*') other tests' workers wrote does not apply."""
    async with get_engine().begin() as conn:
        await slots.set_limit(conn, key, limit)


async def _claim(key: str, limit: int) -> list[slots.SlotClaim]:
    await _limit(key, limit)
    async with get_engine().begin() as conn:
        claims = await slots.claim(conn, queue_key=key, default_limit=limit, manager_id=MANAGER)
        await slots.mark_signalled(conn, [c.job_id for c in claims])
    return claims


async def _finish(key: str, trial_id: str, attempt_id: int, workflow_id: str, limit: int):
    await _limit(key, limit)
    async with autocommit_connection() as conn:
        return await attempts.finish(
            conn,
            trial_id=trial_id,
            attempt_id=attempt_id,
            attempt_status=AttemptStatus.SUCCESS,
            fields=SUCCESS,
            hand_over=attempts.HandOver(workflow_id, limit, MANAGER),
        )


async def _rows(key: str) -> dict[str, tuple[str, int | None]]:
    """trial id -> (status, slot) of the key's rows."""
    async with get_engine().connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT headers ->> 'trial_id' AS trial_id, status, slot FROM pgqueuer "
                "WHERE entrypoint = :k"
            ),
            {"k": key},
        )
        return {r.trial_id: (str(r.status), r.slot) for r in rows}


async def _unsignalled(key: str) -> set[str]:
    async with get_engine().connect() as conn:
        holders = await slots.unsignalled_holders(conn, older_than_sec=-1)
    return {h.trial_id for h in holders if h.queue_key == key}


async def test_the_slot_goes_to_the_next_trial_of_the_workflow_in_the_same_slot(
    migrated: None,
) -> None:
    key = unique_key("hand-over")
    workflow_id, trials = await _trials(key, 3)
    await _in_line(workflow_id, trials, key)
    [first] = await _claim(key, limit=1)
    assert first.trial_id == trials[0]
    attempt_id = await open_test_attempt(trials[0])

    handed = await _finish(key, trials[0], attempt_id, workflow_id, limit=1)

    assert handed is not None
    assert (handed.trial_id, handed.slot, handed.workflow_id) == (trials[1], 0, workflow_id)
    rows = await _rows(key)
    assert rows == {trials[1]: ("picked", 0), trials[2]: ("queued", None)}
    # Unsignalled until its attempt opens: a result lost on the way is signalled by the
    # dispatcher's re-signal loop.
    assert await _unsignalled(key) == {trials[1]}
    await open_test_attempt(trials[1])
    assert await _unsignalled(key) == set()
    async with get_session() as session:
        trial = await records.get_trial(session, trials[0])
        assert (trial.status, trial.reward) == (JobStatus.SUCCESS, 1.0)
        logged = (
            (
                await session.execute(
                    text("SELECT status FROM pgqueuer_log WHERE job_id = :id ORDER BY id"),
                    {"id": handed.job_id},
                )
            )
            .scalars()
            .all()
        )
    assert [str(s) for s in logged] == ["queued", "picked"]


@pytest.mark.parametrize("ahead", ["earlier", "higher-priority", "judge"])
async def test_no_hand_over_past_the_head_of_the_line(migrated: None, ahead: str) -> None:
    """The next in line is another workflow's trial (put in line earlier, or of a higher
    priority), or a judge call: the slot is only given back, for the dispatcher to grant in
    order."""
    key = unique_key(f"hand-over-{ahead}")
    workflow_id, trials = await _trials(key, 2)
    other_workflow, others = await _trials(key, 1)
    await _in_line(workflow_id, trials[:1], key)
    await _claim(key, limit=1)
    attempt_id = await open_test_attempt(trials[0])
    if ahead == "earlier":
        await _in_line(other_workflow, others, key)
        await _in_line(workflow_id, trials[1:], key)
        first_in_line = others[0]
    elif ahead == "higher-priority":
        await _in_line(workflow_id, trials[1:], key)
        await _in_line(other_workflow, others, key, priority=5)
        first_in_line = others[0]
    else:
        async with get_engine().begin() as conn:
            await slots.enqueue_judge(
                conn, subject=f"judge-{key}", queue_key=key, workflow_id=workflow_id, priority=9
            )
        await _in_line(workflow_id, trials[1:], key)
        first_in_line = f"judge-{key}"

    assert await _finish(key, trials[0], attempt_id, workflow_id, limit=1) is None
    assert (await _rows(key))[trials[1]] == ("queued", None)
    [granted] = await _claim(key, limit=1)
    assert granted.trial_id == first_in_line


async def test_no_hand_over_while_a_lowered_limit_is_exceeded(migrated: None) -> None:
    key = unique_key("hand-over-limit")
    workflow_id, trials = await _trials(key, 4)
    await _in_line(workflow_id, trials, key)
    assert len(await _claim(key, limit=3)) == 3
    attempt_id = await open_test_attempt(trials[0])
    # Lowered to 2 while 3 hold: the freed slot is not refilled (2 still hold, at the limit).
    assert await _finish(key, trials[0], attempt_id, workflow_id, limit=2) is None
    assert (await _rows(key))[trials[3]] == ("queued", None)
    # At the limit again once another finishes: the third holder's slot is handed over, unless
    # its number is past the limit.
    attempt_id = await open_test_attempt(trials[1])
    handed = await _finish(key, trials[1], attempt_id, workflow_id, limit=2)
    assert handed is not None and handed.trial_id == trials[3] and handed.slot == 1
    holding = [slot for status, slot in (await _rows(key)).values() if status == "picked"]
    assert sorted(holding) == [1, 2] and len(holding) <= 2


async def _lane_ran(key: str, *, n_trials: int, ran: int) -> tuple[list[str], str]:
    """A task's trials in line at limit 1, the first ``ran`` of them run one after the other in
    one slot lane, each handing the slot to the next: the trial ids and the lane's id."""
    workflow_id, trials = await _trials(key, n_trials)
    await _in_line(workflow_id, trials, key)
    assert len(await _claim(key, limit=1)) == 1
    lane = str(uuid.uuid4())
    for index in range(ran):
        attempt_id = await open_test_attempt(trials[index], lane=lane)
        handed = await _finish(key, trials[index], attempt_id, workflow_id, limit=1)
        assert handed is not None and handed.trial_id == trials[index + 1]
    return trials, lane


async def test_a_lane_failed_for_good_reports_the_trials_it_ran_and_fails_the_one_it_ran(
    migrated: None,
) -> None:
    """A slot lane ran trial 0, then 1, and was running 2 when Temporal gave up on it (every
    attempt spent, say each worker died): the records tell its next attempt, or fail_trial,
    which trials it ran and which it was running. fail_trial reports the finished ones and fails
    the one that was running, giving its slot back."""
    key = unique_key("lane-failed")
    trials, lane = await _lane_ran(key, n_trials=3, ran=2)
    await open_test_attempt(trials[2], lane=lane)
    async with autocommit_connection() as conn:
        in_lane = await attempts.lane_trials(conn, first_trial_id=trials[0], lane=lane)
        # Its worker is gone: its slot row is no longer touched.
        await conn.execute(
            text("UPDATE pgqueuer SET heartbeat = now() - interval '1 hour' WHERE entrypoint = :k"),
            {"k": key},
        )
    assert [(t.trial_id, t.status, t.attempts, t.slot) for t in in_lane] == [
        (trials[1], "success", 1, None),
        (trials[2], "running", 1, 0),
    ]

    outcome = await ActivityEnvironment().run(
        fail_trial, FailTrialInput(trials[0], 1, "TimeoutError", "heartbeat timeout", lane=lane)
    )

    assert (outcome.trial_id, outcome.status) == (trials[0], "success")
    assert [(t.trial_id, t.status, t.run_number) for t in outcome.lane] == [
        (trials[1], "success", 1),
        (trials[2], "failed", 1),
    ]
    assert outcome.next_grant is None
    assert await slot_rows(key) == 0


async def test_a_lane_failed_for_good_hands_back_the_trial_it_ran_with_attempts_left(
    migrated: None,
) -> None:
    """The lane's Temporal attempts were spent on its first trial and on others: the trial it
    was running had one attempt of its own, and goes back to the workflow with its slot."""
    key = unique_key("lane-hand-back")
    trials, lane = await _lane_ran(key, n_trials=2, ran=1)
    async with autocommit_connection() as conn:
        assert await attempts.enter_lane(conn, lane=lane, trial_id=trials[0], holder=1)
    await open_test_attempt(trials[1], lane=lane)

    outcome = await ActivityEnvironment().run(
        fail_trial,
        FailTrialInput(
            trials[0], 1, "TimeoutError", "heartbeat timeout", lane=lane, max_attempts=3
        ),
    )

    assert outcome.lane == []
    assert outcome.next_grant == SlotGrant(trials[1], 0, 1, attempts_spent=1)
    assert (await _rows(key))[trials[1]] == ("picked", 0), "it keeps its slot"


async def test_a_lane_entered_by_a_later_attempt_opens_no_trial_for_an_earlier_one(
    migrated: None,
) -> None:
    """An attempt of a lane's activity that Temporal gave up on may still run (cut off from
    Temporal): once a later attempt has entered the lane to read its trials, the earlier one
    opens no more trials in it, and the slot it was handed stays unsignalled for the
    dispatchers to tell the workflow of."""
    key = unique_key("lane-fence")
    trials, lane = await _lane_ran(key, n_trials=2, ran=1)
    async with autocommit_connection() as conn:
        assert await attempts.enter_lane(conn, lane=lane, trial_id=trials[0], holder=1)
        assert await attempts.enter_lane(conn, lane=lane, trial_id=trials[0], holder=2)
        assert not await attempts.enter_lane(conn, lane=lane, trial_id=trials[0], holder=1)

        def opening(lane_holder: int):
            return attempts.open_attempt(
                conn,
                trial_id=trials[1],
                run_number=1,
                temporal_attempt=1,
                worker="test",
                alive_within_sec=1.0,
                lane=lane,
                lane_holder=lane_holder,
            )

        assert isinstance(await opening(1), attempts.LaneFenced)
        unsignalled = await slots.unsignalled_holders(conn, older_than_sec=0)
        assert trials[1] in {c.trial_id for c in unsignalled}
        assert isinstance(await opening(2), attempts.OpenedAttempt)


async def test_a_task_at_limit_one_runs_its_trials_handing_the_slot_over(
    start_worker, temporal_client: Client
) -> None:
    key = unique_key("hand-over-run")
    start_worker("--n-concurrent", json.dumps({key: 1}))
    task_id = await submit(
        temporal_client,
        "sleep",
        local(n_trials=4, model=key, agent_env={"ODDISH_SLEEP_SECONDS": "0.2"}),
    )
    task = await wait_for_task(temporal_client, task_id)

    assert [t["status"] for t in task["trials"]] == ["success"] * 4
    spans = intervals(task)
    assert max_overlap(spans) == 1
    by_index = [start for start, _ in spans]
    assert by_index == sorted(by_index), "FIFO: the trials ran in the order they were put in line"
    history = await temporal_client.get_workflow_handle(f"task/{task_id}").fetch_history()
    results = [
        json.loads(e.activity_task_completed_event_attributes.result.payloads[0].data)
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    # The slot is handed over in a slot lane: the first trial's activity ran the other three.
    lanes = [r["lane"] for r in results if isinstance(r, dict) and r.get("lane")]
    assert [[ran["trial_id"] for ran in lane] for lane in lanes] == [
        [t["id"] for t in task["trials"][1:]]
    ]
    assert await slot_rows(key) == 0
    await check_history(temporal_client, task_id, "slot-lanes-completed")


async def test_dispatchers_claim_only_for_keys_with_a_free_slot(migrated: None) -> None:
    """A slot handed over leaves its key full: the dispatchers, woken by its DELETE, look the key
    over and make no claim for it; a key with a free slot is claimed for as before."""
    full, free = unique_key("full"), unique_key("free")
    for key in (full, free):
        workflow_id, trials = await _trials(key, 2)
        await _in_line(workflow_id, trials, key)
    await _claim(full, limit=1)
    await _limit(free, 1)

    async with get_engine().connect() as conn:
        keys = set(await slots.keys_with_waiting_trials(conn, default_limit=1))
    assert free in keys and full not in keys


async def test_a_claim_for_a_workflow_takes_only_its_own_head_of_the_line(
    migrated: None,
) -> None:
    """A task's first step claims for its own trials only while they head the line: a trial of
    another workflow ahead of them, or a judge call's, is not overtaken."""
    key = unique_key("own-head")
    mine, (first, second, later) = await _trials(key, 3)
    other, (theirs,) = await _trials(key, 1)
    await _in_line(mine, [first, second], key)
    await _in_line(other, [theirs], key)
    await _in_line(mine, [later], key)
    await _limit(key, 4)

    async with get_engine().begin() as conn:
        claims = await slots.claim(
            conn, queue_key=key, default_limit=4, manager_id=MANAGER, for_workflow=mine
        )
    assert [c.trial_id for c in claims] == [first, second]
    rows = await _rows(key)
    assert rows[theirs] == ("queued", None) and rows[later] == ("queued", None)
    # Left unsignalled: if the claimer's result is lost, the re-signal loop tells the workflow.
    assert await _unsignalled(key) == {first, second}

    # Once the other workflow's trial holds a slot, the rest of the line is the workflow's.
    async with get_engine().begin() as conn:
        assert not await slots.claim(
            conn, queue_key=key, default_limit=4, manager_id=MANAGER, for_workflow=mine
        )
    assert [c.trial_id for c in await _claim(key, limit=4)] == [theirs, later]


@pytest.mark.parametrize(
    ("n_trials", "limit", "scenario"),
    [
        # Put in line by the task's first step, a local activity.
        (3, 2, "grant-on-request-completed"),
        # More than a local slot request takes: an activity of its own.
        (LOCAL_SLOT_REQUEST_MAX + 6, 16, "grant-on-request-wide-completed"),
    ],
)
async def test_a_task_starts_its_first_trials_without_a_signal(
    start_worker, temporal_client: Client, n_trials: int, limit: int, scenario: str
) -> None:
    """The slots free at a task's start come back with its slot request: its first trials are
    all scheduled in the workflow task that has the request's result, before any grant is
    signalled; the rest are handed over."""
    key = unique_key("grant-on-request")
    start_worker("--n-concurrent", json.dumps({key: limit}))
    task_id = await submit(
        temporal_client, "hello-pass", local("nop", n_trials=n_trials, model=key)
    )
    task = await wait_for_task(temporal_client, task_id)

    assert [t["status"] for t in task["trials"]] == ["success"] * n_trials
    assert max_overlap(intervals(task)) <= limit
    history = await temporal_client.get_workflow_handle(f"task/{task_id}").fetch_history()
    events = history.events
    scheduled_in = [
        e.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "run_trial"
    ]
    assert scheduled_in.count(scheduled_in[0]) == limit
    # (A finishing trial whose output takes long to store signals the slot it hands over.)
    signals = [
        e.event_id for e in events if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert all(signal > scheduled_in[0] for signal in signals)
    assert await slot_rows(key) == 0
    await check_history(temporal_client, task_id, scenario)
