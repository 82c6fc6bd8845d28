"""``TaskWorkflow``: one per task. Trials wait for slots and run, then analyses, then the verdict.

Deterministic orchestration only: every read and write happens in an activity, addressed by name
so this module imports nothing that does I/O.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

from oddish import search_attributes as sa
from oddish.contracts import (
    AnalyzeTrialInput,
    FailTrialInput,
    RunTrialInput,
    SlotGrant,
    SlotRequest,
    TaskProgress,
    TaskStatusUpdate,
    TaskWorkflowInput,
    TrialOutcome,
    TrialRef,
    VerdictInput,
)
from oddish.statuses import JobStatus, TaskStatus

# Bookkeeping activities touch only Postgres: retried until it answers (it may be restarting).
RECORD_TIMEOUT = timedelta(seconds=60)
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
ANALYSIS_TIMEOUT = timedelta(minutes=30)
ANALYSIS_RETRY = RetryPolicy(maximum_attempts=5)


def _error_text(err: BaseException) -> tuple[str, str]:
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type, cause.message
    return type(cause).__name__, str(cause)


@workflow.defn(name="TaskWorkflow")
class TaskWorkflow:
    def __init__(self) -> None:
        self._task_id = ""
        self._status: str = TaskStatus.PENDING
        self._granted: set[str] = set()
        self._trial_status: dict[str, str] = {}
        self._trial_tasks: dict[str, asyncio.Task[TrialOutcome]] = {}

    @workflow.signal(name="slot_granted")
    def slot_granted(self, grant: SlotGrant) -> None:
        self._granted.add(grant.trial_id)

    @workflow.query(name="progress")
    def progress(self) -> TaskProgress:
        statuses = list(self._trial_status.values())
        return TaskProgress(
            task_id=self._task_id,
            status=self._status,
            trials_total=len(statuses),
            trials_waiting=sum(s in (JobStatus.PENDING, JobStatus.QUEUED) for s in statuses),
            trials_running=statuses.count(JobStatus.RUNNING),
            trials_finished=sum(
                s in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED) for s in statuses
            ),
            trial_statuses=dict(self._trial_status),
        )

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> str:
        self._task_id = inp.task_id
        self._trial_status = {t.trial_id: JobStatus.PENDING.value for t in inp.trials}
        try:
            return await self._pipeline(inp)
        except BaseException as err:
            if not is_cancelled_exception(err):
                raise
            # Trials run as tasks of their own: cancel them, and let them tear their sandboxes
            # down before their slots are given back.
            for trial_task in self._trial_tasks.values():
                trial_task.cancel()
            await asyncio.gather(*self._trial_tasks.values(), return_exceptions=True)
            await self._set_status(inp.task_id, TaskStatus.CANCELLED, activity="cancel_task_records")
            raise

    async def _pipeline(self, inp: TaskWorkflowInput) -> str:
        await self._set_status(inp.task_id, TaskStatus.RUNNING)
        await workflow.execute_activity(
            "request_slots",
            SlotRequest(
                workflow_id=workflow.info().workflow_id, task_id=inp.task_id,
                priority=inp.priority, trials=inp.trials,
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"queue {len(inp.trials)} trials",
        )
        for trial in inp.trials:
            self._trial_status[trial.trial_id] = JobStatus.QUEUED
        outcomes = await self._run_trials_as_granted(inp)

        if inp.run_analysis:
            try:
                await self._set_status(inp.task_id, TaskStatus.ANALYZING)
                await asyncio.gather(*(
                    workflow.execute_activity(
                        "analyze_trial", AnalyzeTrialInput(o.trial_id),
                        start_to_close_timeout=ANALYSIS_TIMEOUT, retry_policy=ANALYSIS_RETRY,
                        summary=f"analyse trial {t.index}",
                    )
                    for t, o in zip(inp.trials, outcomes)
                    if o.status != JobStatus.CANCELLED
                ))
                await self._set_status(inp.task_id, TaskStatus.VERDICT_PENDING)
                await workflow.execute_activity(
                    "decide_verdict", VerdictInput(inp.task_id),
                    start_to_close_timeout=ANALYSIS_TIMEOUT, retry_policy=ANALYSIS_RETRY,
                    summary="verdict",
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                error_type, message = _error_text(err)
                await self._set_status(inp.task_id, TaskStatus.FAILED, f"{error_type}: {message}")
                return TaskStatus.FAILED
        await self._set_status(inp.task_id, TaskStatus.COMPLETED)
        return TaskStatus.COMPLETED

    async def _run_trials_as_granted(self, inp: TaskWorkflowInput) -> list[TrialOutcome]:
        """Start each trial when its slot arrives; a waiting trial costs no coroutine, only a row."""
        waiting = {t.trial_id: t for t in inp.trials}
        while waiting:
            await workflow.wait_condition(lambda: not self._granted.isdisjoint(waiting))
            for trial_id in sorted(self._granted.intersection(waiting)):
                trial = waiting.pop(trial_id)
                self._trial_tasks[trial_id] = asyncio.create_task(self._run_trial(inp, trial))
        return list(await asyncio.gather(*(self._trial_tasks[t.trial_id] for t in inp.trials)))

    async def _run_trial(self, inp: TaskWorkflowInput, trial: TrialRef) -> TrialOutcome:
        self._trial_status[trial.trial_id] = JobStatus.RUNNING
        policy = inp.retry_policy
        try:
            outcome: TrialOutcome = await workflow.execute_activity(
                "run_trial",
                RunTrialInput(inp.task_id, trial.trial_id, run_number=1,
                              max_attempts=policy.max_attempts),
                result_type=TrialOutcome,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_timeout_sec),
                heartbeat_timeout=timedelta(seconds=policy.heartbeat_timeout_sec),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.initial_interval_sec),
                    maximum_interval=timedelta(seconds=policy.max_interval_sec),
                    maximum_attempts=policy.max_attempts,
                ),
                summary=f"trial {trial.index} · {trial.agent} · {trial.queue_key}",
                # A cancelled trial holds its slot until its sandbox is gone.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            # Every attempt is spent and none recorded a result (e.g. each worker died).
            error_type, message = _error_text(err)
            outcome = await workflow.execute_activity(
                "fail_trial",
                FailTrialInput(trial.trial_id, 1, error_type, message),
                result_type=TrialOutcome,
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=f"trial {trial.index} failed",
            )
        self._trial_status[trial.trial_id] = outcome.status
        return outcome

    async def _set_status(
        self, task_id: str, status: TaskStatus, error_message: str | None = None,
        *, activity: str = "record_task_status",
    ) -> None:
        self._status = status
        workflow.upsert_search_attributes([sa.STATUS.value_set(status.value)])
        await workflow.execute_activity(
            activity,
            TaskStatusUpdate(task_id, status.value, error_message),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"task {status.value}",
        )
