"""Activities that write task status and slot requests for the workflow."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from oddish.activities.trial import alive_within_sec, lane_trial_grant, lane_trial_outcome
from oddish.config import get_settings
from oddish.contracts import (
    FailTrialInput,
    SlotGrant,
    SlotRequest,
    TaskStatusUpdate,
    TrialOutcome,
)
from oddish.db import attempts, records, slots
from oddish.db.connection import autocommit_connection, get_session
from oddish.statuses import (
    TERMINAL_JOB_STATUSES,
    AttemptStatus,
    JobStatus,
    OutcomeKind,
    TaskStatus,
)


@activity.defn(name="record_task_status")
async def record_task_status(update: TaskStatusUpdate) -> None:
    async with get_session() as session:
        await records.set_task_status(session, update.task_id, update.status, update.error_message)
        await session.commit()


# The holder the slots claimed with a request (``grant_at_once``) are recorded under (PGQueuer's
# queue_manager_id): this process.
REQUEST_MANAGER_ID = uuid.uuid4()


@activity.defn(name="request_slots")
async def request_slots(request: SlotRequest) -> list[SlotGrant]:
    """Put the trials in line for their queue keys' slots; the dispatcher signals each grant,
    but for those made at once (``grant_at_once``, see ``begin_task``), which are returned."""
    async with get_session() as session:
        grants = await _queue_trials(session, request)
        await session.commit()
    return grants


@activity.defn(name="begin_task")
async def begin_task(request: SlotRequest) -> list[SlotGrant]:
    """A task's first step, in one transaction: the task recorded running and its trials put in
    line for their slots (``record_task_status`` and ``request_slots`` at once).

    With ``grant_at_once``, the slots free now go to the task's trials that head their keys'
    lines in the same transaction, and come back as grants: the first trials start in the
    workflow task that put them in line, with no dispatcher round and no signal. The rows are
    left unsignalled: should this result be lost (the worker dies in the workflow task), the
    dispatchers' re-signal loop tells the workflow, as for a dispatcher that died after a claim.
    """
    async with get_session() as session:
        await records.set_task_status(session, request.task_id, TaskStatus.RUNNING)
        grants = await _queue_trials(session, request)
        await session.commit()
    return grants


async def _claim_for(session: AsyncSession, request: SlotRequest) -> list[SlotGrant]:
    grants: list[SlotGrant] = []
    default_limit = get_settings().default_model_concurrency
    for queue_key in sorted({t.queue_key for t in request.trials}):
        try:
            # A savepoint: a PGQueuer worker taking the slot first (the unique slot index) costs
            # this key's claim, not the request.
            async with session.begin_nested():
                claims = await slots.claim(
                    await session.connection(),
                    queue_key=queue_key,
                    default_limit=default_limit,
                    manager_id=REQUEST_MANAGER_ID,
                    for_workflow=request.workflow_id,
                )
        except IntegrityError:
            continue
        grants += [SlotGrant(c.trial_id, c.slot, c.run_number) for c in claims]
    return grants


async def _queue_trials(session: AsyncSession, request: SlotRequest) -> list[SlotGrant]:
    """Put the request's trials in line; the grants made at once when it asks for them."""
    waiting = set(
        await records.queue_trials_for_run(
            session, [t.trial_id for t in request.trials], request.run_number
        )
    )
    await slots.enqueue(
        await session.connection(),
        trials=[(t.trial_id, t.queue_key) for t in request.trials if t.trial_id in waiting],
        workflow_id=request.workflow_id,
        priority=request.priority,
        run_number=request.run_number,
    )
    return await _claim_for(session, request) if request.grant_at_once else []


# fail_trial runs under a 60 s start-to-close timeout: it waits this long at most per attempt for
# an attempt that still runs, then asks Temporal to try it again.
STILL_RUNNING_WAIT_SEC = 40.0
STILL_RUNNING = "TrialStillRunning"


@activity.defn(name="fail_trial")
async def fail_trial(inp: FailTrialInput) -> TrialOutcome:
    """Every attempt is spent without a recorded result (e.g. the worker died each time).

    Temporal also gives up on an attempt whose worker lives but could not reach it for longer
    than the heartbeat timeout (a Temporal outage). That attempt carries on, so its trial is
    not failed while it still touches its slot row: this waits for the result it records.

    When the trial's activity was a slot lane, the trials the lane ran after it are reported
    with it (``TrialOutcome.lane``). The one it was running has spent only its own attempts: it
    goes back to the workflow with its slot (``next_grant``) while it has some left, else it is
    failed the same way. The lane is settled first: no attempt of its activity still running
    somewhere opens another trial in it.
    """
    alive_within = alive_within_sec(get_settings().trial_heartbeat_timeout_sec)
    deadline = time.monotonic() + STILL_RUNNING_WAIT_SEC
    outcome = await _failed_once_stopped(inp, alive_within, deadline)
    if inp.lane is None:
        return outcome
    async with autocommit_connection() as conn:
        await attempts.enter_lane(
            conn, lane=inp.lane, trial_id=inp.trial_id, holder=attempts.SETTLED_LANE
        )
        lane = await attempts.lane_trials(conn, first_trial_id=inp.trial_id, lane=inp.lane)
    for trial in lane:
        if trial.status in TERMINAL_JOB_STATUSES:
            outcome.lane.append(lane_trial_outcome(trial))
            continue
        grant = lane_trial_grant(trial)
        if grant is not None and trial.attempts < inp.max_attempts and outcome.next_grant is None:
            outcome.next_grant = grant
            continue
        ran = await _failed_once_stopped(
            dataclasses.replace(
                inp, trial_id=trial.trial_id, run_number=trial.run_number, lane=None
            ),
            alive_within,
            deadline,
        )
        ran.run_number = trial.run_number
        ran.error_type = ran.error_message = None
        outcome.lane.append(ran)
    return outcome


async def _failed_once_stopped(
    inp: FailTrialInput, alive_within: float, deadline: float
) -> TrialOutcome:
    while True:
        outcome = await _fail_unless_running(inp, alive_within)
        if outcome is not None:
            return outcome
        if time.monotonic() > deadline:
            raise ApplicationError(
                f"trial {inp.trial_id}: an attempt Temporal gave up on still runs; "
                "waiting for the result it records",
                type=STILL_RUNNING,
            )
        await asyncio.sleep(1.0)


async def _fail_unless_running(inp: FailTrialInput, alive_within: float) -> TrialOutcome | None:
    """The trial's outcome for this run: as recorded, else failed now; None while an attempt
    of it still runs."""
    async with get_session() as session:
        # Locked: an attempt finishing meanwhile must not be read as still running by one
        # query and gone by the next, and so be failed over its recorded result.
        trial = await records.get_trial(session, inp.trial_id, lock=True)
        # Another run of the trial (a retry put it back in line) is not this one's to fail.
        if trial.run_number != inp.run_number or trial.status in TERMINAL_JOB_STATUSES:
            return TrialOutcome.of(trial.id, trial)
        running = [a for a in trial.attempts if a.status == AttemptStatus.RUNNING]
        if running and await slots.heard_from_within(
            await session.connection(), trial.id, alive_within
        ):
            return None
        fields = records.TrialResultFields(
            status=JobStatus.FAILED,
            outcome=OutcomeKind.INFRASTRUCTURE_ERROR,
            error_type=inp.error_type,
            error_message=inp.error_message,
        )
        await records.finish_trial(
            session,
            trial_id=inp.trial_id,
            attempt_id=running[-1].id if running else None,
            attempt_status=AttemptStatus.LOST,
            fields=fields,
        )
        await session.commit()
    return TrialOutcome.of(inp.trial_id, fields)


@activity.defn(name="cancel_task_records")
async def cancel_task_records(update: TaskStatusUpdate) -> None:
    """The workflow was cancelled: stop waiting for slots, mark unfinished trials cancelled."""
    async with get_session() as session:
        task = await records.get_task(session, update.task_id)
        await slots.release_workflow(
            await session.connection(), workflow_id=task.workflow_id, log_status="canceled"
        )
        await records.cancel_unfinished_trials(session, update.task_id)
        await records.set_task_status(session, update.task_id, update.status, update.error_message)
        await session.commit()
