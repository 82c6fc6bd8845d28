"""Activities that write task status and slot requests for the workflow."""

from __future__ import annotations

from temporalio import activity

from oddish.contracts import FailTrialInput, SlotRequest, TaskStatusUpdate, TrialOutcome
from oddish.db import records, slots
from oddish.db.connection import get_session
from oddish.statuses import AttemptStatus, JobStatus, OutcomeKind


@activity.defn(name="record_task_status")
async def record_task_status(update: TaskStatusUpdate) -> None:
    async with get_session() as session:
        await records.set_task_status(session, update.task_id, update.status, update.error_message)
        await session.commit()


@activity.defn(name="request_slots")
async def request_slots(request: SlotRequest) -> None:
    """Put the trials in line for their queue keys' slots; the dispatcher signals each grant."""
    async with get_session() as session:
        waiting = set(await records.queue_trials_for_run(
            session, [t.trial_id for t in request.trials], request.run_number
        ))
        await slots.enqueue(
            await session.connection(),
            trials=[(t.trial_id, t.queue_key) for t in request.trials if t.trial_id in waiting],
            workflow_id=request.workflow_id,
            priority=request.priority,
            run_number=request.run_number,
        )
        await session.commit()


@activity.defn(name="fail_trial")
async def fail_trial(inp: FailTrialInput) -> TrialOutcome:
    """Every attempt is spent without a recorded result (e.g. the worker died each time)."""
    async with get_session() as session:
        trial = await records.get_trial(session, inp.trial_id)
        if trial.run_number == inp.run_number and trial.status in records.TERMINAL_TRIAL_STATUSES:
            outcome = TrialOutcome(trial.id, trial.status, trial.outcome, trial.reward,
                                   trial.error_type, trial.error_message)
        else:
            running = [a for a in trial.attempts if a.status == AttemptStatus.RUNNING]
            fields = records.TrialResultFields(
                status=JobStatus.FAILED, outcome=OutcomeKind.INFRASTRUCTURE_ERROR,
                error_type=inp.error_type, error_message=inp.error_message,
            )
            await records.finish_trial(
                session, trial_id=inp.trial_id,
                attempt_id=running[-1].id if running else None,
                attempt_status=AttemptStatus.LOST, fields=fields,
            )
            outcome = TrialOutcome(inp.trial_id, fields.status, fields.outcome, None,
                                   inp.error_type, inp.error_message)
        await session.commit()
    return outcome


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
