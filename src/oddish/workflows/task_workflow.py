"""``TaskWorkflow``: one per task. Trials wait for slots and run, then analyses, then the verdict.

Deterministic orchestration only: every read and write happens in an activity, addressed by name
so this module imports nothing that does I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType, ChildWorkflowCancellationType

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
    TrialBatchResult,
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
# From this change on, a task of more than its input's batch_size trials (400) runs them in
# TrialBatchWorkflow children of at most that many each: a workflow run's history stays far
# below Temporal's bounds (about 10 events per trial, 10,240 at most) however many trials.
BATCH_PATCH = "trial-batches"
# The error type of a retry refused because the workflow is completing; a new run takes it.
TASK_FINISHING = "TaskFinishing"
# From this change on, analyses and verdicts run on the judge's task queue (they may wait long
# for a slot of the judge model's key without keeping trials from a worker's activity slots),
# and a trial finished twice in one round (failed, retried, finished) is analysed once.
JUDGE_PATCH = "judge-task-queue"


# From this change on, trials run on the trials' task queue, served by the worker's trial
# processes (oddish.worker.trial_processes).
TRIALS_PATCH = "trial-processes"
# From this change on, the task's status records (and a trial failed for good) run as local
# activities: inside the workflow task of the worker that holds the workflow, not behind every
# other workflow's task in the task queue. A fresh worker facing a backlog records each task
# running and puts its trials in line in one workflow task instead of two.
LOCAL_RECORDS_PATCH = "local-records"
# From this change on, a slot request of at most LOCAL_SLOT_REQUEST_MAX trials is a local
# activity too; a task's first step records it running and puts its trials in line in one
# (``begin_task``). Between a task's start and its first grant there is then one workflow task
# and one transaction, no activity task.
LOCAL_SLOT_REQUESTS_PATCH = "local-slot-requests"
# Grants that arrive while a local activity holds the workflow task open wait in the server's
# buffer, which fails the workflow task past 100 events: a request of at most this many trials
# cannot lead to more grants than that.
LOCAL_SLOT_REQUEST_MAX = 64
# From this change on, a finishing trial may hand its slot to the workflow's next trial in line
# (in the statement that gives it back), and the workflow takes the grant from the trial's
# outcome: the next trial starts in the workflow task of the result, with no signal.
HAND_OVER_PATCH = "slot-hand-over"
# From this change on, a slot request (``begin_task``, ``request_slots``) also claims the slots
# free now for its trials at the head of their keys' lines and returns them: those trials start
# in the workflow task that has the request's result, with no dispatcher round and no signal.
GRANT_ON_REQUEST_PATCH = "grant-on-request"
# From this change on, a trial's activity is a slot lane: it goes on to run each trial its slot
# is handed to, with no round trip through the workflow between them, and reports their outcomes
# with its own (``TrialOutcome.lane``). The workflow learns of those trials when the lane ends;
# until then they stay in line here, and a retry of one the lane has failed is taken (the caller
# checked its record).
SLOT_LANES_PATCH = "slot-lanes"


def trial_task_queue(task_queue: str) -> str:
    """Where a worker serving ``task_queue`` takes trials."""
    return f"{task_queue}-trials"


def judge_task_queue(task_queue: str) -> str:
    """Where a worker serving ``task_queue`` takes analyses and verdicts."""
    return f"{task_queue}-judge"


def _error_text(err: BaseException) -> tuple[str, str]:
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type, cause.message
    return type(cause).__name__, str(cause)


class _TrialRunner:
    """The trials of one workflow: in line for their slots, run as each is granted, analysed.
    ``TaskWorkflow`` runs a task's trials this way, or (a large task) hands them out in batches
    to ``TrialBatchWorkflow`` children that do."""

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
        self._local_slot_requests = False
        self._hand_over = False
        self._grant_on_request = False
        self._lanes = False
        # Slot lanes running now: any trial in line may be running, or have run, in one.
        self._lanes_running = 0
        # Attempts a trial granted from a slot lane spent there: (the run, how many).
        self._attempts_spent: dict[str, tuple[int, int]] = {}
        # Trials a retry put back in line, not started or reported since: not in a lane's hands.
        self._requeued: set[str] = set()
        # Whether trials run on the trials' task queue (TRIALS_PATCH), once asked.
        self._trial_processes: bool | None = None
        # Trials being put in line while others already run (a large task's first step).
        self._queueing: asyncio.Task[None] | None = None

    @workflow.signal(name="slot_granted")
    def slot_granted(self, grant: SlotGrant) -> None:
        self._grants[grant.trial_id] = grant.run_number
        if grant.attempts_spent:
            self._attempts_spent[grant.trial_id] = (grant.run_number, grant.attempts_spent)

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

    def _by_run(self, trials: list[TrialRef]) -> list[tuple[int, list[TrialRef]]]:
        """The trials marked waiting (before any await, so the trial loop cannot finish without
        them), grouped by their current run number."""
        by_run: dict[int, list[TrialRef]] = {}
        for trial in trials:
            self._waiting[trial.trial_id] = trial
            self._trial_status[trial.trial_id] = JobStatus.QUEUED
            by_run.setdefault(self._run_numbers[trial.trial_id], []).append(trial)
        return sorted(by_run.items())

    async def _queue(self, trials: list[TrialRef]) -> None:
        """Put trials in line for a slot, each for its current run number."""
        await self._request_runs(self._by_run(trials))

    async def _request_runs(self, runs: list[tuple[int, list[TrialRef]]]) -> None:
        for run_number, same_run in runs:
            await self._request_slots(same_run, run_number)

    def _local_request(self, trials: list[TrialRef]) -> bool:
        # A larger request is not a local activity: the grants it leads to arrive as signals,
        # and while a local activity holds its workflow task open more than 100 of them make
        # the server fail that task (and so run the activity again).
        return self._local_slot_requests and len(trials) <= LOCAL_SLOT_REQUEST_MAX

    def _slot_request(self, trials: list[TrialRef], run_number: int) -> SlotRequest:
        return SlotRequest(
            workflow_id=workflow.info().workflow_id,
            task_id=self._task_id,
            priority=self._priority,
            trials=trials,
            run_number=run_number,
            grant_at_once=self._grant_on_request,
        )

    def _take_grants(self, grants: list[SlotGrant] | None) -> None:
        """The grants a slot request came back with (none before GRANT_ON_REQUEST_PATCH)."""
        for grant in grants or []:
            self.slot_granted(grant)

    async def _request_slots(
        self, trials: list[TrialRef], run_number: int, *, local: bool = True
    ) -> None:
        execute = (
            workflow.execute_local_activity
            if local and self._local_request(trials)
            else workflow.execute_activity
        )
        grants: list[SlotGrant] | None = await execute(
            "request_slots",
            self._slot_request(trials, run_number),
            result_type=list[SlotGrant],
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"queue {len(trials)} trials"
            + (f" (run {run_number})" if run_number > 1 else ""),
        )
        self._take_grants(grants)

    async def _record(
        self, activity: str, arg: object, *, summary: str, result_type: type | None = None
    ) -> Any:
        """A bookkeeping activity (Postgres only, idempotent), retried until Postgres answers."""
        execute = (
            workflow.execute_local_activity
            if workflow.patched(LOCAL_RECORDS_PATCH)
            else workflow.execute_activity
        )
        return await execute(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=summary,
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
                self._requeued.discard(trial_id)
                self._trial_tasks[trial_id] = asyncio.create_task(
                    self._run_trial(inp, trial, self._run_numbers[trial_id])
                )

    async def _run_trial(
        self, inp: TaskWorkflowInput, trial: TrialRef, run_number: int
    ) -> TrialOutcome:
        self._trial_status[trial.trial_id] = JobStatus.RUNNING
        policy = inp.retry_policy
        if self._trial_processes is None:
            self._trial_processes = workflow.patched(TRIALS_PATCH)
        trials_queue = (
            trial_task_queue(workflow.info().task_queue) if self._trial_processes else None
        )
        lane = str(workflow.uuid4()) if self._lanes else None
        spent_run, spent = self._attempts_spent.pop(trial.trial_id, (run_number, 0))
        if spent_run != run_number:
            spent = 0
        self._lanes_running += lane is not None
        try:
            outcome: TrialOutcome = await workflow.execute_activity(
                "run_trial",
                RunTrialInput(
                    inp.task_id,
                    trial.trial_id,
                    run_number=run_number,
                    max_attempts=policy.max_attempts,
                    hand_over=self._hand_over,
                    lane=lane,
                    attempts_spent=spent,
                ),
                result_type=TrialOutcome,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_timeout_sec),
                heartbeat_timeout=timedelta(seconds=policy.heartbeat_timeout_sec),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.initial_interval_sec),
                    maximum_interval=timedelta(seconds=policy.max_interval_sec),
                    maximum_attempts=max(1, policy.max_attempts - spent),
                ),
                task_queue=trials_queue,
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
            outcome = await self._record(
                "fail_trial",
                FailTrialInput(
                    trial.trial_id,
                    run_number,
                    error_type,
                    message,
                    lane=lane,
                    max_attempts=policy.max_attempts,
                ),
                result_type=TrialOutcome,
                summary=f"trial {trial.index} failed",
            )
        self._lanes_running -= lane is not None
        self._trial_status[trial.trial_id] = outcome.status
        self._to_analyze.append(trial.trial_id)
        for ran in outcome.lane:
            self._ran_in_lane(ran)
        if self._hand_over and outcome.next_grant is not None:
            self.slot_granted(outcome.next_grant)
        return outcome

    def _ran_in_lane(self, ran: TrialOutcome) -> None:
        """A trial a slot lane ran: out of line, finished. Unless a retry has put it back in line
        for its next run meanwhile."""
        if ran.run_number != self._run_numbers.get(ran.trial_id):
            return
        self._waiting.pop(ran.trial_id, None)
        self._requeued.discard(ran.trial_id)
        self._trial_status[ran.trial_id] = ran.status
        self._to_analyze.append(ran.trial_id)

    async def _analyse(
        self, inp: TaskWorkflowInput, finished: list[str], judge_queue: str | None
    ) -> None:
        """Analyse the finished trials (a cancelled one has nothing to analyse); ActivityError
        when an analysis fails for good. Without the judge there is nothing to ask per trial:
        the verdict records the rule-based analyses."""
        if not inp.analyse_each_trial:
            return
        # Activity options are not part of what a replay compares: histories recorded without a
        # heartbeat timeout replay unchanged.
        analysis_heartbeat = timedelta(seconds=inp.analysis_heartbeat_timeout_sec)
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

    def _init_trials(self, inp: TaskWorkflowInput) -> None:
        # Asked in the first activation: asked after a local activity's result in the same
        # workflow task, it replayed as unpatched (a nondeterminism error).
        self._local_slot_requests = workflow.patched(LOCAL_SLOT_REQUESTS_PATCH)
        self._hand_over = workflow.patched(HAND_OVER_PATCH)
        self._grant_on_request = workflow.patched(GRANT_ON_REQUEST_PATCH)
        self._lanes = workflow.patched(SLOT_LANES_PATCH) and self._hand_over
        if self._grant_on_request:
            # The first trials may now start right after a local activity's result: asked there,
            # a patch replays as unpatched. Earlier histories have it asked at the first trial.
            self._trial_processes = workflow.patched(TRIALS_PATCH)
        self._task_id = inp.task_id
        self._priority = inp.priority
        self._trials = {t.trial_id: t for t in inp.trials}
        self._run_numbers = {t.trial_id: inp.run_numbers.get(t.trial_id, 1) for t in inp.trials}
        self._trial_status = {
            t.trial_id: inp.settled.get(t.trial_id, JobStatus.PENDING.value) for t in inp.trials
        }

    async def _cancel_trials(self) -> None:
        """Trials run as tasks of their own: cancel them, and let them tear their sandboxes
        down before their slots are given back."""
        tasks = [*self._trial_tasks.values(), *([self._queueing] if self._queueing else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@workflow.defn(name="TaskWorkflow")
class TaskWorkflow(_TrialRunner):
    def __init__(self) -> None:
        super().__init__()
        self._status: str = TaskStatus.PENDING
        # Set once the last round is over: a retry from then on goes to a new run.
        self._finishing = False
        # A large task's trials run in TrialBatchWorkflow children (BATCH_PATCH).
        self._batched = False
        self._inp: TaskWorkflowInput | None = None
        self._batches: dict[str, asyncio.Task[None]] = {}
        self._batch_errors: list[str] = []

    # Named by its method: "retry_trials" (the named form of the decorator loses its typing).
    @workflow.update
    async def retry_trials(self, request: RetryTrialsRequest) -> RetryTrialsResult:
        """Run failed trials of this (still running) workflow again, each as a new attempt."""
        for trial_id in request.trial_ids:
            self._run_numbers[trial_id] += 1
            if self._lanes:
                self._requeued.add(trial_id)
        retried = [self._trials[t] for t in request.trial_ids]
        if self._batched and self._inp is not None:
            # In a batch of their own: the batch that ran them may still be running others.
            self._start_batches(self._inp, retried)
        else:
            await self._queue(retried)
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
        # A batched task learns its trials' statuses when their batch ends: the caller checked
        # the records, and the batch's slot request leaves out a trial that is not retryable.
        # Likewise a trial a running slot lane may have run is still in line here until the lane
        # ends (the caller checked its record); not one a retry has put back in line since.
        busy = [
            t
            for t in request.trial_ids
            if self._trial_status[t] not in RETRYABLE_TRIAL_STATUSES
            and not self._batched
            and not (
                self._lanes_running
                and t in self._waiting
                and t not in self._requeued
                and t not in self._granted()
            )
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
        self._init_trials(inp)
        self._inp = inp
        pending = [t for t in inp.trials if t.trial_id not in inp.settled]
        try:
            if len(pending) > inp.batch_size and workflow.patched(BATCH_PATCH):
                self._batched = True
                return await self._pipeline_in_batches(inp, pending)
            return await self._pipeline(inp)
        except BaseException as err:
            if not is_cancelled_exception(err):
                raise
            await self._cancel_trials()
            # Each batch tears its trials down first (its cancellation is waited for).
            for batch in self._batches.values():
                batch.cancel()
            await asyncio.gather(*self._batches.values(), return_exceptions=True)
            await self._set_status(
                inp.task_id, TaskStatus.CANCELLED, activity="cancel_task_records"
            )
            raise

    # --- a large task: its trials in batches -------------------------------------------------

    async def _pipeline_in_batches(self, inp: TaskWorkflowInput, pending: list[TrialRef]) -> str:
        """Batches of at most ``batch_size`` trials, each a child workflow that runs and analyses
        them (so that no history grows past Temporal's bounds), then the verdict. A retry that
        arrives meanwhile starts a batch of its own, and the verdict waits for it."""
        await self._set_status(inp.task_id, TaskStatus.RUNNING)
        self._start_batches(inp, pending)
        judge_queue = judge_task_queue(workflow.info().task_queue)
        final = TaskStatus.COMPLETED
        while True:
            if self._status != TaskStatus.RUNNING:
                await self._set_status(inp.task_id, TaskStatus.RUNNING)
            await workflow.wait_condition(lambda: not self._batches_running())
            final = TaskStatus.COMPLETED
            self._analysis_error = None
            if self._batch_errors:
                self._analysis_error = self._batch_errors[-1]
                final = TaskStatus.FAILED
            elif inp.run_analysis:
                try:
                    await self._set_status(inp.task_id, TaskStatus.VERDICT_PENDING)
                    await self._decide(inp, judge_queue)
                except ActivityError as err:
                    if is_cancelled_exception(err):
                        raise
                    error_type, message = _error_text(err)
                    self._analysis_error = f"{error_type}: {message}"
                    final = TaskStatus.FAILED
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not self._batches_running():
                break
        self._finishing = True
        await self._set_status(inp.task_id, final, self._analysis_error)
        return final

    def _batches_running(self) -> bool:
        return any(not b.done() for b in self._batches.values())

    def _start_batches(self, inp: TaskWorkflowInput, trials: list[TrialRef]) -> None:
        """Start children for ``trials``, ``batch_size`` at a time; marked queued at once, so the
        round cannot end before them."""
        for trial in trials:
            self._trial_status[trial.trial_id] = JobStatus.QUEUED
        size = max(1, inp.batch_size)
        for start in range(0, len(trials), size):
            chunk = trials[start : start + size]
            number = len(self._batches)
            child_id = batch_workflow_id(workflow.info().workflow_id, number)
            child_input = dataclasses.replace(
                inp,
                trials=chunk,
                run_numbers={t.trial_id: self._run_numbers[t.trial_id] for t in chunk},
                settled={},
            )
            self._batches[child_id] = asyncio.create_task(self._run_batch(child_id, child_input))

    async def _run_batch(self, child_id: str, child_input: TaskWorkflowInput) -> None:
        try:
            result: TrialBatchResult = await workflow.execute_child_workflow(
                "TrialBatchWorkflow",
                child_input,
                id=child_id,
                result_type=TrialBatchResult,
                task_queue=workflow.info().task_queue,
                # Cancelled with the task: its trials' sandboxes are gone before the task's
                # cancellation is recorded.
                cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                static_summary=f"trials {child_input.trials[0].index}"
                f"-{child_input.trials[-1].index}",
            )
        except ChildWorkflowError as err:
            if is_cancelled_exception(err):
                raise
            error_type, message = _error_text(err.cause or err)
            self._batch_errors.append(f"{error_type}: {message}")
            return
        self._trial_status.update(result.statuses)
        if result.analysis_error:
            self._batch_errors.append(result.analysis_error)

    async def _pipeline(self, inp: TaskWorkflowInput) -> str:
        """Rounds of: trials in line run, then analyses and the verdict. A retry that arrives
        meanwhile puts trials back in line, and the round repeats for them."""
        await self._begin(inp, [t for t in inp.trials if t.trial_id not in inp.settled])

        final = TaskStatus.COMPLETED
        while True:
            if self._status != TaskStatus.RUNNING:
                await self._set_status(inp.task_id, TaskStatus.RUNNING)
            await self._run_trials_as_granted(inp)
            if self._queueing is not None:
                await self._queueing
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

    async def _begin(self, inp: TaskWorkflowInput, pending: list[TrialRef]) -> None:
        """The task recorded running and its trials put in line: in one local activity when
        they are few enough and of one run (LOCAL_SLOT_REQUESTS_PATCH), else one by one. With
        GRANT_ON_REQUEST_PATCH a run of more trials begins the same way with its first
        LOCAL_SLOT_REQUEST_MAX, which start at once, while an activity puts the rest in line."""
        runs = self._by_run(pending)
        local = self._local_slot_requests and (
            len(pending) <= LOCAL_SLOT_REQUEST_MAX or self._grant_on_request
        )
        if len(runs) != 1 or not local:
            await self._set_status(inp.task_id, TaskStatus.RUNNING)
            await self._request_runs(runs)
            return
        [(run_number, trials)] = runs
        first, rest = trials[:LOCAL_SLOT_REQUEST_MAX], trials[LOCAL_SLOT_REQUEST_MAX:]
        self._show_status(TaskStatus.RUNNING)
        grants: list[SlotGrant] | None = await self._record(
            "begin_task",
            self._slot_request(first, run_number),
            summary=f"task running, {len(first)} trials queued",
            result_type=list[SlotGrant],
        )
        self._take_grants(grants)
        if rest:
            # Behind the first in line (FIFO holds), by an activity: a local one would hold this
            # workflow task, and the first trials' start, until it ends. Awaited once the trials
            # have run.
            self._queueing = asyncio.create_task(self._request_slots(rest, run_number, local=False))

    async def _analyse_and_decide(self, inp: TaskWorkflowInput) -> TaskStatus:
        finished, self._to_analyze = self._to_analyze, []
        self._analysis_error = None
        judge_queue: str | None = None
        if workflow.patched(JUDGE_PATCH):
            finished = list(dict.fromkeys(finished))
            judge_queue = judge_task_queue(workflow.info().task_queue)
        try:
            await self._set_status(inp.task_id, TaskStatus.ANALYZING)
            await self._analyse(inp, finished, judge_queue)
            await self._set_status(inp.task_id, TaskStatus.VERDICT_PENDING)
            await self._decide(inp, judge_queue)
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            error_type, message = _error_text(err)
            self._analysis_error = f"{error_type}: {message}"
            return TaskStatus.FAILED
        return TaskStatus.COMPLETED

    async def _decide(self, inp: TaskWorkflowInput, judge_queue: str | None) -> None:
        await workflow.execute_activity(
            "decide_verdict",
            VerdictInput(inp.task_id),
            start_to_close_timeout=ANALYSIS_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=inp.analysis_heartbeat_timeout_sec),
            retry_policy=ANALYSIS_RETRY,
            task_queue=judge_queue,
            summary="verdict",
        )

    def _show_status(self, status: TaskStatus) -> None:
        self._status = status
        workflow.upsert_search_attributes([sa.STATUS.value_set(status.value)])

    async def _set_status(
        self,
        task_id: str,
        status: TaskStatus,
        error_message: str | None = None,
        *,
        activity: str = "record_task_status",
    ) -> None:
        self._show_status(status)
        await self._record(
            activity,
            TaskStatusUpdate(task_id, status.value, error_message),
            summary=f"task {status.value}",
        )


def batch_workflow_id(task_workflow_id: str, number: int) -> str:
    """A batch's workflow id: under its task's (``task/<id>/batch-<n>``), so that the task's slot
    rows and its batches' are found together."""
    return f"{task_workflow_id}/batch-{number}"


@workflow.defn(name="TrialBatchWorkflow")
class TrialBatchWorkflow(_TrialRunner):
    """A batch of a large task's trials: in line for their slots, run, then analysed. The task
    (its parent) keeps the task's status, takes retries and decides the verdict."""

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> TrialBatchResult:
        self._init_trials(inp)
        try:
            await self._queue(list(inp.trials))
            await self._run_trials_as_granted(inp)
            error = None
            if inp.run_analysis:
                finished = list(dict.fromkeys(self._to_analyze))
                try:
                    await self._analyse(inp, finished, judge_task_queue(workflow.info().task_queue))
                except ActivityError as err:
                    if is_cancelled_exception(err):
                        raise
                    error_type, message = _error_text(err)
                    error = f"{error_type}: {message}"
            return TrialBatchResult(statuses=dict(self._trial_status), analysis_error=error)
        except BaseException as err:
            if is_cancelled_exception(err):
                await self._cancel_trials()
            raise
