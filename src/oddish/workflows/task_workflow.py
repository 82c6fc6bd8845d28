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
    RetryTrialsRequest,
    RetryTrialsResult,
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
from oddish.statuses import (
    RETRYABLE_TRIAL_STATUSES,
    TERMINAL_JOB_STATUSES,
    WAITING_JOB_STATUSES,
    JobStatus,
    TaskStatus,
)

# Bookkeeping activities touch only Postgres: retried until it answers (it may be restarting).
RECORD_TIMEOUT = timedelta(seconds=60)
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
# An analysis or verdict holds its worker at most this long: it may wait for a slot of the judge
# model's key and out a busy provider; a dead or frozen worker is noticed sooner, by its silence
# (the heartbeat timeout of the input).
ANALYSIS_TIMEOUT = timedelta(hours=6)
ANALYSIS_RETRY = RetryPolicy(maximum_attempts=5)
# The error type of a retry refused because the workflow is completing; a new run takes it.
TASK_FINISHING = "TaskFinishing"
# From this change on, analyses and verdicts run on the judge's task queue (they may wait long
# for a slot of the judge model's key without keeping trials from a worker's activity slots),
# and a trial finished twice in one round (failed, retried, finished) is analysed once.
JUDGE_PATCH = "judge-task-queue"


def judge_task_queue(task_queue: str) -> str:
    """Where a worker serving ``task_queue`` takes analyses and verdicts."""
    return f"{task_queue}-judge"


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
        self._trials: dict[str, TrialRef] = {}
        self._run_numbers: dict[str, int] = {}
        # The run number each trial's latest slot grant was for.
        self._grants: dict[str, int] = {}
        # Trials in line for a slot, not started yet.
        self._waiting: dict[str, TrialRef] = {}
        self._trial_status: dict[str, str] = {}
        self._trial_tasks: dict[str, asyncio.Task[TrialOutcome]] = {}
        # Trials finished since the last analysis, in the order they finished.
        self._to_analyze: list[str] = []
        self._priority = 0
        self._analysis_error: str | None = None
        # Set once the last round is over: a retry from then on goes to a new run.
        self._finishing = False

    @workflow.signal(name="slot_granted")
    def slot_granted(self, grant: SlotGrant) -> None:
        self._grants[grant.trial_id] = grant.run_number

    @workflow.query(name="progress")
    def progress(self) -> TaskProgress:
        statuses = list(self._trial_status.values())
        return TaskProgress(
            task_id=self._task_id,
            status=self._status,
            trials_total=len(statuses),
            trials_waiting=sum(s in WAITING_JOB_STATUSES for s in statuses),
            trials_running=statuses.count(JobStatus.RUNNING),
            trials_finished=sum(s in TERMINAL_JOB_STATUSES for s in statuses),
            trial_statuses=dict(self._trial_status),
        )

    # Named by its method: "retry_trials" (the named form of the decorator loses its typing).
    @workflow.update
    async def retry_trials(self, request: RetryTrialsRequest) -> RetryTrialsResult:
        """Run failed trials of this (still running) workflow again, each as a new attempt."""
        for trial_id in request.trial_ids:
            self._run_numbers[trial_id] += 1
        await self._queue([self._trials[t] for t in request.trial_ids])
        return RetryTrialsResult(self._task_id, list(request.trial_ids))

    @retry_trials.validator
    def _validate_retry(self, request: RetryTrialsRequest) -> None:
        if self._finishing:
            raise ApplicationError(
                "the task is finishing; retry it once it has finished", type=TASK_FINISHING
            )
        if not request.trial_ids:
            raise ValueError("no trials to retry")
        unknown = [t for t in request.trial_ids if t not in self._trials]
        if unknown:
            raise ValueError(f"trials not in task {self._task_id}: {', '.join(unknown)}")
        busy = [
            t for t in request.trial_ids if self._trial_status[t] not in RETRYABLE_TRIAL_STATUSES
        ]
        if busy:
            raise ValueError(
                "only failed or cancelled trials can be retried; "
                + ", ".join(f"{t} is {self._trial_status[t]}" for t in busy)
            )
        if len(set(request.trial_ids)) != len(request.trial_ids):
            raise ValueError("a trial is listed twice")

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> str:
        self._task_id = inp.task_id
        self._priority = inp.priority
        self._trials = {t.trial_id: t for t in inp.trials}
        self._run_numbers = {t.trial_id: inp.run_numbers.get(t.trial_id, 1) for t in inp.trials}
        self._trial_status = {
            t.trial_id: inp.settled.get(t.trial_id, JobStatus.PENDING.value) for t in inp.trials
        }
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
            await self._set_status(
                inp.task_id, TaskStatus.CANCELLED, activity="cancel_task_records"
            )
            raise

    async def _pipeline(self, inp: TaskWorkflowInput) -> str:
        """Rounds of: trials in line run, then analyses and the verdict. A retry that arrives
        meanwhile puts trials back in line, and the round repeats for them."""
        await self._set_status(inp.task_id, TaskStatus.RUNNING)
        await self._queue([t for t in inp.trials if t.trial_id not in inp.settled])

        final = TaskStatus.COMPLETED
        while True:
            if self._status != TaskStatus.RUNNING:
                await self._set_status(inp.task_id, TaskStatus.RUNNING)
            await self._run_trials_as_granted(inp)
            final = (
                await self._analyse_and_decide(inp) if inp.run_analysis else TaskStatus.COMPLETED
            )
            # A retry accepted meanwhile may still be putting its trials in line.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not self._waiting:
                break
        self._finishing = True
        await self._set_status(inp.task_id, final, self._analysis_error)
        return final

    async def _queue(self, trials: list[TrialRef]) -> None:
        """Put trials in line for a slot, each for its current run number."""
        by_run: dict[int, list[TrialRef]] = {}
        for trial in trials:
            # Marked waiting before any await, so the trial loop cannot finish without them.
            self._waiting[trial.trial_id] = trial
            self._trial_status[trial.trial_id] = JobStatus.QUEUED
            by_run.setdefault(self._run_numbers[trial.trial_id], []).append(trial)
        for run_number, same_run in sorted(by_run.items()):
            await self._request_slots(same_run, run_number)

    async def _request_slots(self, trials: list[TrialRef], run_number: int) -> None:
        await workflow.execute_activity(
            "request_slots",
            SlotRequest(
                workflow_id=workflow.info().workflow_id,
                task_id=self._task_id,
                priority=self._priority,
                trials=trials,
                run_number=run_number,
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"queue {len(trials)} trials"
            + (f" (run {run_number})" if run_number > 1 else ""),
        )

    def _trials_running(self) -> bool:
        return any(not t.done() for t in self._trial_tasks.values())

    def _granted(self) -> list[str]:
        return sorted(t for t in self._waiting if self._grants.get(t) == self._run_numbers[t])

    async def _run_trials_as_granted(self, inp: TaskWorkflowInput) -> None:
        """Start each trial when its slot arrives; a waiting trial costs no coroutine, only a
        row."""
        while self._waiting or self._trials_running():
            await workflow.wait_condition(
                lambda: bool(self._granted()) or not (self._waiting or self._trials_running())
            )
            for trial_id in self._granted():
                trial = self._waiting.pop(trial_id)
                self._trial_tasks[trial_id] = asyncio.create_task(
                    self._run_trial(inp, trial, self._run_numbers[trial_id])
                )

    async def _analyse_and_decide(self, inp: TaskWorkflowInput) -> TaskStatus:
        finished, self._to_analyze = self._to_analyze, []
        self._analysis_error = None
        # Activity options are not part of what a replay compares: histories recorded without a
        # heartbeat timeout replay unchanged.
        analysis_heartbeat = timedelta(seconds=inp.analysis_heartbeat_timeout_sec)
        judge_queue: str | None = None
        if workflow.patched(JUDGE_PATCH):
            finished = list(dict.fromkeys(finished))
            judge_queue = judge_task_queue(workflow.info().task_queue)
        try:
            await self._set_status(inp.task_id, TaskStatus.ANALYZING)
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        "analyze_trial",
                        AnalyzeTrialInput(trial_id),
                        start_to_close_timeout=ANALYSIS_TIMEOUT,
                        heartbeat_timeout=analysis_heartbeat,
                        retry_policy=ANALYSIS_RETRY,
                        task_queue=judge_queue,
                        summary=f"analyse trial {self._trials[trial_id].index}",
                    )
                    for trial_id in finished
                    if self._trial_status[trial_id] != JobStatus.CANCELLED
                )
            )
            await self._set_status(inp.task_id, TaskStatus.VERDICT_PENDING)
            await workflow.execute_activity(
                "decide_verdict",
                VerdictInput(inp.task_id),
                start_to_close_timeout=ANALYSIS_TIMEOUT,
                heartbeat_timeout=analysis_heartbeat,
                retry_policy=ANALYSIS_RETRY,
                task_queue=judge_queue,
                summary="verdict",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            error_type, message = _error_text(err)
            self._analysis_error = f"{error_type}: {message}"
            return TaskStatus.FAILED
        return TaskStatus.COMPLETED

    async def _run_trial(
        self, inp: TaskWorkflowInput, trial: TrialRef, run_number: int
    ) -> TrialOutcome:
        self._trial_status[trial.trial_id] = JobStatus.RUNNING
        policy = inp.retry_policy
        try:
            outcome: TrialOutcome = await workflow.execute_activity(
                "run_trial",
                RunTrialInput(
                    inp.task_id,
                    trial.trial_id,
                    run_number=run_number,
                    max_attempts=policy.max_attempts,
                ),
                result_type=TrialOutcome,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_timeout_sec),
                heartbeat_timeout=timedelta(seconds=policy.heartbeat_timeout_sec),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.initial_interval_sec),
                    maximum_interval=timedelta(seconds=policy.max_interval_sec),
                    maximum_attempts=policy.max_attempts,
                ),
                summary=f"trial {trial.index} · {trial.agent} · {trial.queue_key}"
                + (f" · run {run_number}" if run_number > 1 else ""),
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
                FailTrialInput(trial.trial_id, run_number, error_type, message),
                result_type=TrialOutcome,
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=f"trial {trial.index} failed",
            )
        self._trial_status[trial.trial_id] = outcome.status
        self._to_analyze.append(trial.trial_id)
        return outcome

    async def _set_status(
        self,
        task_id: str,
        status: TaskStatus,
        error_message: str | None = None,
        *,
        activity: str = "record_task_status",
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
