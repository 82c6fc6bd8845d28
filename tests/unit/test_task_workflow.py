"""TaskWorkflow against a real Temporal server, with mock activities and a fake slot dispatcher.

The workflow addresses its activities by name, so these mocks stand in for the real ones without
Postgres or Harbor: the tier checks the orchestration alone (fan-out, slots, retries, the retry
update, cancellation, analysis) and that the workflow module runs in the default sandbox.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker

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
    TrialRetryPolicy,
    VerdictInput,
)
from oddish.statuses import JobStatus, TaskStatus
from oddish.temporal_gateway import start_task_workflow_run
from oddish.workflows.ids import workflow_id_for_task
from oddish.workflows.task_workflow import (
    LOCAL_SLOT_REQUEST_MAX,
    TaskWorkflow,
    TrialBatchWorkflow,
    judge_task_queue,
    trial_task_queue,
)

FAST_RETRIES = TrialRetryPolicy(
    max_attempts=2,
    initial_interval_sec=0.05,
    max_interval_sec=0.1,
    heartbeat_timeout_sec=3,
    start_to_close_timeout_sec=30,
)
TEARDOWN_SEC = 0.3
WAIT_SEC = 15.0
HISTORY_LIMIT = 10_240


def trial_refs(n: int, agents: tuple[str, ...] = ("claude-code", "codex")) -> list[TrialRef]:
    return [
        TrialRef(
            trial_id=f"trial-{i}",
            index=i,
            agent=agents[i % len(agents)],
            model=None,
            queue_key=agents[i % len(agents)],
            environment="docker",
        )
        for i in range(n)
    ]


def task_input(trials: list[TrialRef], **overrides: Any) -> TaskWorkflowInput:
    fields: dict[str, Any] = {
        "task_id": f"task-{uuid.uuid4().hex[:12]}",
        "experiment_id": "exp-unit",
        "task_name": "unit",
        "priority": 3,
        "run_analysis": True,
        "trials": trials,
        "retry_policy": FAST_RETRIES,
        **overrides,
    }
    return TaskWorkflowInput(**fields)


@dataclass
class Call:
    name: str
    arg: Any


@dataclass
class FakeOddish:
    """The activities the workflow calls by name, and a dispatcher that grants at most ``limit``
    slots at once, each given back when its trial's result is in (as the real one does)."""

    client: Client
    limit: int | None = None
    hold: set[str] = field(default_factory=set)
    failing: set[tuple[str, int]] = field(default_factory=set)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    run_seconds: float = 0.0
    # Whether run_trial acts as a slot lane when asked to (RunTrialInput.lane): it goes on to run
    # the trials its slot is handed to, as the real one does.
    lanes: bool = False
    # Trials whose run fails in a lane for good, and whose attempt there fails to be retried.
    failed_in_lane: set[tuple[str, int]] = field(default_factory=set)
    retried_from_lane: set[tuple[str, int]] = field(default_factory=set)
    analysis_error: ApplicationError | None = None
    # Attempts of analyze_trial that hang without a heartbeat, as on a worker that froze.
    frozen_analysis_attempts: int = 0
    log: list[Call] = field(default_factory=list)
    granted: set[tuple[str, int]] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    _line: list[tuple[str, str, int]] = field(default_factory=list)
    _requested: set[tuple[str, str, int]] = field(default_factory=set)
    _in_use: int = 0
    _slots: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def calls(self, name: str) -> list[Any]:
        return [c.arg for c in self.log if c.name == name]

    def index(self, name: str, predicate: Callable[[Any], bool] = lambda _: True) -> list[int]:
        return [i for i, c in enumerate(self.log) if c.name == name and predicate(c.arg)]

    @property
    def statuses(self) -> list[str]:
        """The task's statuses in the order written. A status is written by a local activity,
        at least once: when its workflow task is not accepted (an event arrived meanwhile) it is
        written again on replay, which a reader of the row cannot tell from once."""
        written = [u.status for u in self.calls("record_task_status")]
        return [s for i, s in enumerate(written) if i == 0 or written[i - 1] != s]

    @property
    def runs(self) -> list[tuple[str, int]]:
        return [(r.trial_id, r.run_number) for r in self.calls("run_trial")]

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.begin_task,
            self.request_slots,
            self.run_trial,
            self.fail_trial,
            self.record_task_status,
            self.cancel_task_records,
            self.analyze_trial,
            self.decide_verdict,
        ]

    async def release(self, trial_id: str) -> None:
        """Let a held trial have its slot."""
        self.hold.discard(trial_id)
        await self._dispatch()

    async def _dispatch(self, for_workflow: str | None = None) -> list[SlotGrant]:
        """Grant what fits, signalling each grant; with ``for_workflow``, only as far as the line's
        head is that workflow's trials, and the grants are returned instead (as a slot request
        with ``grant_at_once`` does)."""
        grants: list[tuple[str, SlotGrant]] = []
        for entry in list(self._line):
            workflow_id, trial_id, run_number = entry
            if self.limit is not None and self._in_use >= self.limit:
                break
            if for_workflow is not None and workflow_id != for_workflow:
                break
            if trial_id in self.hold:
                continue
            self._line.remove(entry)
            self._in_use += 1
            self.granted.add((trial_id, run_number))
            grants.append((workflow_id, SlotGrant(trial_id, next(self._slots), run_number)))
        if for_workflow is not None:
            return [grant for _, grant in grants]
        await asyncio.gather(
            *(
                self.client.get_workflow_handle_for(TaskWorkflow.run, workflow_id).signal(
                    TaskWorkflow.slot_granted, grant
                )
                for workflow_id, grant in grants
            )
        )
        return []

    async def _give_back(self) -> None:
        self._in_use -= 1
        await self._dispatch()

    @activity.defn(name="request_slots")
    async def request_slots(self, request: SlotRequest) -> list[SlotGrant]:
        self.log.append(Call("request_slots", request))
        # Idempotent, as the slot table is: a local activity run again (its workflow task was
        # not accepted) puts nobody in line twice.
        for t in request.trials:
            entry = (request.workflow_id, t.trial_id, request.run_number)
            if entry not in self._requested:
                self._requested.add(entry)
                self._line.append(entry)
        grants = await self._dispatch(request.workflow_id) if request.grant_at_once else []
        await self._dispatch()
        return grants

    @activity.defn(name="begin_task")
    async def begin_task(self, request: SlotRequest) -> list[SlotGrant]:
        self.log.append(Call("begin_task", request))
        await self.record_task_status(TaskStatusUpdate(request.task_id, TaskStatus.RUNNING.value))
        return await self.request_slots(request)

    @activity.defn(name="run_trial")
    async def run_trial(self, inp: RunTrialInput) -> TrialOutcome:
        key = (inp.trial_id, inp.run_number)
        self.log.append(Call("run_trial", inp))
        if key not in self.granted:
            self.violations.append(f"{key} ran without a slot grant")
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        if self.limit is not None and self.running > self.limit:
            self.violations.append(f"{self.running} trials ran at once, over {self.limit}")
        try:
            if key in self.failing:
                raise ApplicationError("sandbox crashed", type="SandboxCrashed")
            gate = self.gates.get(inp.trial_id)
            if gate is not None:
                while not gate.is_set():
                    activity.heartbeat()
                    await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(self.run_seconds)
        except asyncio.CancelledError:
            await asyncio.sleep(TEARDOWN_SEC)
            self.log.append(Call("run_trial_torn_down", inp))
            raise
        finally:
            self.running -= 1
        outcome = TrialOutcome(inp.trial_id, JobStatus.SUCCESS.value, "success", 1.0)
        if inp.lane is not None and self.lanes:
            return await self._run_lane(inp, outcome)
        await self._give_back()
        return outcome

    def _hand_over(self, workflow_id: str) -> SlotGrant | None:
        """The slot given back goes to the head of the line when it is this workflow's trial."""
        if not self._line or self._line[0][0] != workflow_id or self._line[0][1] in self.hold:
            return None
        _, trial_id, run_number = self._line.pop(0)
        self.granted.add((trial_id, run_number))
        return SlotGrant(trial_id, next(self._slots), run_number)

    async def _run_lane(self, inp: RunTrialInput, first: TrialOutcome) -> TrialOutcome:
        workflow_id = activity.info().workflow_id
        assert workflow_id is not None
        grant = self._hand_over(workflow_id)
        while grant is not None:
            key = (grant.trial_id, grant.run_number)
            handed = RunTrialInput(
                inp.task_id, grant.trial_id, grant.run_number, inp.max_attempts, True, inp.lane
            )
            self.log.append(Call("run_trial", handed))
            gate = self.gates.get(grant.trial_id)
            while gate is not None and not gate.is_set():
                activity.heartbeat()
                await asyncio.sleep(0.05)
            if key in self.retried_from_lane:
                # Its slot kept, it goes on in an activity of its own.
                first.next_grant = replace(grant, attempts_spent=1)
                return first
            status = JobStatus.FAILED if key in self.failed_in_lane else JobStatus.SUCCESS
            first.lane.append(
                TrialOutcome(grant.trial_id, status.value, None, None, run_number=grant.run_number)
            )
            grant = self._hand_over(workflow_id)
        await self._give_back()
        return first

    @activity.defn(name="fail_trial")
    async def fail_trial(self, inp: FailTrialInput) -> TrialOutcome:
        self.log.append(Call("fail_trial", inp))
        await self._give_back()
        return TrialOutcome(
            inp.trial_id,
            JobStatus.FAILED.value,
            "infrastructure_error",
            None,
            inp.error_type,
            inp.error_message,
        )

    @activity.defn(name="record_task_status")
    async def record_task_status(self, update: TaskStatusUpdate) -> None:
        self.log.append(Call("record_task_status", update))

    @activity.defn(name="cancel_task_records")
    async def cancel_task_records(self, update: TaskStatusUpdate) -> None:
        self.log.append(Call("cancel_task_records", update))

    @activity.defn(name="analyze_trial")
    async def analyze_trial(self, inp: AnalyzeTrialInput) -> str:
        self.log.append(Call("analyze_trial", inp))
        if self.analysis_error is not None:
            raise self.analysis_error
        if activity.info().attempt <= self.frozen_analysis_attempts:
            await asyncio.Event().wait()
        return "success"

    @activity.defn(name="decide_verdict")
    async def decide_verdict(self, inp: VerdictInput) -> str:
        self.log.append(Call("decide_verdict", inp))
        return "pass"


@dataclass
class Harness:
    client: Client
    fake: FakeOddish
    task_queue: str

    async def start(self, inp: TaskWorkflowInput) -> WorkflowHandle[TaskWorkflow, str]:
        """Start the workflow through the gateway, as submissions do."""
        await start_task_workflow_run(
            self.client,
            inp,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            task_queue=self.task_queue,
        )
        return self.client.get_workflow_handle_for(
            TaskWorkflow.run, workflow_id_for_task(inp.task_id)
        )


@pytest.fixture
async def harness(client: Client) -> AsyncIterator[Harness]:
    """A worker on a task queue of the test's own, running the workflow in the default sandbox."""
    fake = FakeOddish(client)
    task_queue = f"unit-{uuid.uuid4().hex[:8]}"
    throttle = timedelta(milliseconds=100)
    judge_activities = [fake.analyze_trial, fake.decide_verdict]
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=[TaskWorkflow, TrialBatchWorkflow],
            activities=fake.activities(),
            max_concurrent_activities=200,
            default_heartbeat_throttle_interval=throttle,
            max_heartbeat_throttle_interval=throttle,
        ),
        # Analyses and verdicts go to the judge's queue, trials to the trials' queue, as on a
        # real worker.
        Worker(
            client,
            task_queue=judge_task_queue(task_queue),
            activities=judge_activities,
            max_concurrent_activities=200,
            default_heartbeat_throttle_interval=throttle,
            max_heartbeat_throttle_interval=throttle,
        ),
        Worker(
            client,
            task_queue=trial_task_queue(task_queue),
            activities=[fake.run_trial],
            max_concurrent_activities=200,
            default_heartbeat_throttle_interval=throttle,
            max_heartbeat_throttle_interval=throttle,
        ),
    ):
        yield Harness(client, fake, task_queue)


async def finish(handle: WorkflowHandle[TaskWorkflow, str], timeout: float = WAIT_SEC) -> str:
    """The workflow's result, bounded: a failing workflow task is retried for ever, not failed."""
    async with asyncio.timeout(timeout):
        return await handle.result()


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SEC
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def until_progress(
    handle: WorkflowHandle[TaskWorkflow, str], check: Callable[[TaskProgress], bool], what: str
) -> TaskProgress:
    deadline = time.monotonic() + WAIT_SEC
    while True:
        progress = await handle.query(TaskWorkflow.progress)
        if check(progress):
            return progress
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last progress {progress}")
        await asyncio.sleep(0.02)


def trial_ids(trials: Iterable[TrialRef]) -> list[str]:
    return [t.trial_id for t in trials]


async def test_fans_out_every_trial_then_analyses_and_decides(harness: Harness) -> None:
    fake = harness.fake
    trials = trial_refs(5)
    inp = task_input(trials)
    handle = await harness.start(inp)

    assert await finish(handle) == TaskStatus.COMPLETED.value

    [request] = fake.calls("request_slots")
    assert request.workflow_id == handle.id
    assert (request.task_id, request.priority, request.run_number) == (inp.task_id, 3, 1)
    assert trial_ids(request.trials) == trial_ids(trials)
    runs = fake.calls("run_trial")
    assert sorted(r.trial_id for r in runs) == trial_ids(trials)
    assert {(r.task_id, r.run_number, r.max_attempts) for r in runs} == {(inp.task_id, 1, 2)}
    assert sorted(a.trial_id for a in fake.calls("analyze_trial")) == trial_ids(trials)
    assert fake.calls("decide_verdict") == [VerdictInput(inp.task_id)]
    assert max(fake.index("run_trial")) < min(fake.index("analyze_trial"))
    assert max(fake.index("analyze_trial")) < min(fake.index("decide_verdict"))
    assert fake.statuses == ["running", "analyzing", "verdict_pending", "completed"]
    assert {u.task_id for u in fake.calls("record_task_status")} == {inp.task_id}
    assert fake.calls("fail_trial") == []
    assert fake.violations == []
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.STATUS) == TaskStatus.COMPLETED.value


async def test_trials_wait_for_their_slots(harness: Harness) -> None:
    fake = harness.fake
    fake.limit = 2
    fake.run_seconds = 0.1
    trials = trial_refs(6)
    handle = await harness.start(task_input(trials))

    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert fake.violations == []
    assert fake.max_running == 2
    assert sorted(fake.runs) == [(t, 1) for t in trial_ids(trials)]
    assert len(fake.granted) == len(trials)


async def test_trial_out_of_attempts_is_failed_once_and_task_still_completes(
    harness: Harness,
) -> None:
    fake = harness.fake
    fake.failing = {("trial-1", 1)}
    trials = trial_refs(3)
    inp = task_input(trials)
    handle = await harness.start(inp)

    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert fake.runs.count(("trial-1", 1)) == FAST_RETRIES.max_attempts
    # The lane its activity began (none ran after it) is failed with it.
    lanes = {r.lane for r in fake.calls("run_trial") if r.trial_id == "trial-1"}
    assert len(lanes) == 1 and None not in lanes
    assert fake.calls("fail_trial") == [
        FailTrialInput(
            "trial-1", 1, "SandboxCrashed", "sandbox crashed", lane=lanes.pop(), max_attempts=2
        )
    ]
    assert sorted(a.trial_id for a in fake.calls("analyze_trial")) == trial_ids(trials)
    assert fake.calls("decide_verdict") == [VerdictInput(inp.task_id)]
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trial_statuses == {
        "trial-0": "success",
        "trial-1": "failed",
        "trial-2": "success",
    }


async def test_retry_update_runs_a_failed_trial_again_as_a_new_run(harness: Harness) -> None:
    fake = harness.fake
    fake.failing = {("trial-0", 1)}
    fake.hold = {"trial-1"}
    inp = task_input(trial_refs(2))
    handle = await harness.start(inp)
    await until_progress(
        handle, lambda p: p.trial_statuses["trial-0"] == "failed", "trial-0 to fail"
    )

    refusals = {
        "not in task": ["trial-404"],
        "only failed or cancelled trials can be retried; trial-1 is queued": ["trial-1"],
        "no trials to retry": [],
        "listed twice": ["trial-0", "trial-0"],
    }
    for message, ids in refusals.items():
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(ids))
        assert message in str(refused.value.cause), ids
    assert len(fake.calls("request_slots")) == 1

    result = await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(["trial-0"]))

    assert result == RetryTrialsResult(inp.task_id, ["trial-0"])
    retry_request = fake.calls("request_slots")[-1]
    assert (trial_ids(retry_request.trials), retry_request.run_number) == (["trial-0"], 2)
    await until(lambda: ("trial-0", 2) in fake.runs, "trial-0 to run again")
    await fake.release("trial-1")
    assert await finish(handle) == TaskStatus.COMPLETED.value
    assert fake.runs == [("trial-0", 1), ("trial-0", 1), ("trial-0", 2), ("trial-1", 1)]
    assert [f.run_number for f in fake.calls("fail_trial")] == [1]
    assert fake.violations == []
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trial_statuses == {"trial-0": "success", "trial-1": "success"}


async def test_retried_trial_is_analysed_once_per_round(harness: Harness) -> None:
    fake = harness.fake
    fake.failing = {("trial-0", 1)}
    fake.hold = {"trial-1"}
    handle = await harness.start(task_input(trial_refs(2)))
    await until_progress(
        handle, lambda p: p.trial_statuses["trial-0"] == "failed", "trial-0 to fail"
    )
    await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(["trial-0"]))
    await until(lambda: ("trial-0", 2) in fake.runs, "trial-0 to run again")
    await fake.release("trial-1")
    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert sorted(a.trial_id for a in fake.calls("analyze_trial")) == ["trial-0", "trial-1"]


async def test_cancel_tears_running_trials_down_before_recording(harness: Harness) -> None:
    fake = harness.fake
    fake.gates = {"trial-0": asyncio.Event()}
    fake.hold = {"trial-1"}
    inp = task_input(trial_refs(2))
    handle = await harness.start(inp)
    await until(lambda: fake.running == 1, "trial-0 to start")

    await handle.cancel()

    with pytest.raises(WorkflowFailureError) as failure:
        await finish(handle)
    assert isinstance(failure.value.cause, CancelledError)
    assert fake.calls("cancel_task_records") == [
        TaskStatusUpdate(inp.task_id, TaskStatus.CANCELLED.value)
    ]
    [torn_down] = fake.index("run_trial_torn_down")
    assert torn_down < fake.index("cancel_task_records")[0]
    assert fake.runs == [("trial-0", 1)]
    assert fake.statuses == ["running"]
    assert fake.calls("analyze_trial") == fake.calls("decide_verdict") == []
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.STATUS) == TaskStatus.CANCELLED.value


async def test_analysis_failure_fails_the_task_with_its_error(harness: Harness) -> None:
    fake = harness.fake
    fake.analysis_error = ApplicationError(
        "judge unavailable", type="JudgeDown", non_retryable=True
    )
    inp = task_input(trial_refs(2))
    handle = await harness.start(inp)

    assert await finish(handle) == TaskStatus.FAILED.value

    assert fake.statuses == ["running", "analyzing", "failed"]
    assert fake.calls("record_task_status")[-1] == TaskStatusUpdate(
        inp.task_id, TaskStatus.FAILED.value, "JudgeDown: judge unavailable"
    )
    assert fake.calls("decide_verdict") == []


async def test_many_trials_stay_within_history_limits(harness: Harness) -> None:
    fake = harness.fake
    fake.limit = 100
    trials = trial_refs(500, agents=("a", "b", "c", "d"))
    # All in the task's own workflow (not in batches), as tasks before batches ran them.
    handle = await harness.start(task_input(trials, batch_size=10_000))

    # 500 trials and their analyses take 10-25 s on a loaded 2-core machine.
    assert await finish(handle, timeout=90) == TaskStatus.COMPLETED.value

    assert sorted(fake.runs) == sorted((t, 1) for t in trial_ids(trials))
    assert len(fake.calls("analyze_trial")) == len(trials)
    assert fake.violations == []
    events = [event async for event in handle.fetch_history_events()]
    print(f"history of 500 trials: {len(events)} events")
    assert len(events) < HISTORY_LIMIT // 2


async def history_sizes(client: Client, task_workflow_id: str) -> dict[str, int]:
    """Events in the history of the task's workflow and of each of its batches."""
    sizes = {}
    query = f'WorkflowId = "{task_workflow_id}" OR WorkflowId STARTS_WITH "{task_workflow_id}/"'
    async for found in client.list_workflows(query):
        handle = client.get_workflow_handle(found.id, run_id=found.run_id)
        sizes[found.id] = len([e async for e in handle.fetch_history_events()])
    return sizes


async def test_a_large_task_runs_its_trials_in_batches(harness: Harness) -> None:
    fake = harness.fake
    fake.limit = 40
    trials = trial_refs(250, agents=("a", "b", "c"))
    inp = task_input(trials, batch_size=60)
    handle = await harness.start(inp)

    assert await finish(handle, timeout=120) == TaskStatus.COMPLETED.value

    assert sorted(fake.runs) == sorted((t, 1) for t in trial_ids(trials))
    assert sorted(a.trial_id for a in fake.calls("analyze_trial")) == sorted(trial_ids(trials))
    assert len(fake.calls("decide_verdict")) == 1
    assert fake.violations == [] and fake.max_running <= 40
    assert fake.statuses == ["running", "verdict_pending", "completed"]
    # Each batch asked for its own trials' slots, under its own workflow id.
    requests = fake.calls("request_slots")
    assert len(requests) == 5
    assert {r.workflow_id for r in requests} == {
        f"{workflow_id_for_task(inp.task_id)}/batch-{n}" for n in range(5)
    }
    assert sorted(len(r.trials) for r in requests) == [10, 60, 60, 60, 60]
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trials_finished == 250
    sizes = await history_sizes(harness.client, workflow_id_for_task(inp.task_id))
    print(f"histories of 250 trials in batches of 60: {sizes}")
    assert len(sizes) == 6
    assert max(sizes.values()) < 60 * 15


async def test_a_5000_trial_task_keeps_every_history_bounded(harness: Harness) -> None:
    fake = harness.fake
    trials = trial_refs(5_000, agents=("a", "b", "c", "d"))
    # The default batch size; analyses (each batch's own, as in the test above) left out to keep
    # this test short.
    inp = task_input(trials, run_analysis=False)
    handle = await harness.start(inp)

    assert await finish(handle, timeout=600) == TaskStatus.COMPLETED.value

    # Every trial ran (an attempt the loaded test worker did not finish in time ran again).
    assert set(fake.runs) == {(t, 1) for t in trial_ids(trials)}
    assert fake.violations == []
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trials_finished == 5_000
    sizes = await history_sizes(harness.client, workflow_id_for_task(inp.task_id))
    print(f"5,000 trials: {len(sizes)} histories, the largest {max(sizes.values())} events")
    assert len(sizes) == 1 + 13
    assert max(sizes.values()) <= HISTORY_LIMIT


async def test_a_batched_task_retries_a_failed_trial_in_a_batch_of_its_own(
    harness: Harness,
) -> None:
    fake = harness.fake
    fake.failing = {("trial-3", 1)}
    fake.hold = {"trial-20"}
    inp = task_input(trial_refs(30), batch_size=10)
    handle = await harness.start(inp)
    await until(lambda: ("trial-3", 1) in fake.runs, "trial-3 to fail")
    await until(lambda: len(fake.calls("fail_trial")) == 1, "trial-3 to be recorded failed")

    # Its batch ended; another still waits for trial-20's slot.
    await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(["trial-3"]))
    await until(lambda: ("trial-3", 2) in fake.runs, "trial-3 to run again")
    await fake.release("trial-20")
    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert {r for r in fake.runs if r[0] == "trial-3"} == {("trial-3", 1), ("trial-3", 2)}
    retry_batch = [r for r in fake.calls("request_slots") if r.run_number == 2]
    assert [t.trial_id for r in retry_batch for t in r.trials] == ["trial-3"]
    assert retry_batch[0].workflow_id.endswith("/batch-3")
    assert len(fake.calls("decide_verdict")) == 1
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trial_statuses["trial-3"] == "success"


async def test_cancelling_a_batched_task_tears_its_batches_trials_down_first(
    harness: Harness,
) -> None:
    fake = harness.fake
    fake.gates = {"trial-0": asyncio.Event(), "trial-7": asyncio.Event()}
    inp = task_input(trial_refs(12), batch_size=5)
    handle = await harness.start(inp)
    await until(lambda: fake.running == 2, "a trial of two batches to start")

    await handle.cancel()

    with pytest.raises(WorkflowFailureError) as failure:
        await finish(handle)
    assert isinstance(failure.value.cause, CancelledError)
    torn_down = fake.index("run_trial_torn_down")
    assert len(torn_down) == 2
    [cancelled] = fake.index("cancel_task_records")
    assert max(torn_down) < cancelled
    assert fake.calls("decide_verdict") == []


async def test_without_the_judge_only_the_verdict_runs(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.start(task_input(trial_refs(4), analyse_each_trial=False))

    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert len(fake.runs) == 4
    assert fake.calls("analyze_trial") == []
    assert len(fake.calls("decide_verdict")) == 1
    assert fake.statuses == ["running", "analyzing", "verdict_pending", "completed"]


async def test_without_analysis_no_analysis_or_verdict_runs(harness: Harness) -> None:
    fake = harness.fake
    handle = await harness.start(task_input(trial_refs(3), run_analysis=False))

    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert len(fake.runs) == 3
    assert fake.calls("analyze_trial") == fake.calls("decide_verdict") == []
    assert fake.statuses == ["running", "completed"]


async def test_progress_counts_each_trial_once(harness: Harness) -> None:
    fake = harness.fake
    fake.gates = {"trial-1": asyncio.Event()}
    fake.hold = {"trial-2", "trial-3"}
    inp = task_input(trial_refs(4))
    handle = await harness.start(inp)

    progress = await until_progress(
        handle,
        lambda p: p.trial_statuses["trial-0"] == "success" and fake.running == 1,
        "trial-0 to finish while trial-1 runs",
    )

    assert progress == TaskProgress(
        task_id=inp.task_id,
        status=TaskStatus.RUNNING.value,
        trials_total=4,
        trials_waiting=2,
        trials_running=1,
        trials_finished=1,
        trial_statuses={
            "trial-0": "success",
            "trial-1": "running",
            "trial-2": "queued",
            "trial-3": "queued",
        },
    )
    fake.gates["trial-1"].set()
    await fake.release("trial-2")
    await fake.release("trial-3")
    assert await finish(handle) == TaskStatus.COMPLETED.value
    final = await handle.query(TaskWorkflow.progress)
    assert (final.status, final.trials_waiting, final.trials_running, final.trials_finished) == (
        TaskStatus.COMPLETED.value,
        0,
        0,
        4,
    )


async def test_rerun_runs_only_unsettled_trials_with_their_run_numbers(harness: Harness) -> None:
    fake = harness.fake
    inp = task_input(
        trial_refs(4),
        settled={"trial-0": "success", "trial-1": "failed"},
        run_numbers={"trial-2": 3, "trial-3": 2},
    )
    handle = await harness.start(inp)

    assert await finish(handle) == TaskStatus.COMPLETED.value

    assert [(trial_ids(r.trials), r.run_number) for r in fake.calls("request_slots")] == [
        (["trial-3"], 2),
        (["trial-2"], 3),
    ]
    assert sorted(fake.runs) == [("trial-2", 3), ("trial-3", 2)]
    assert sorted(a.trial_id for a in fake.calls("analyze_trial")) == ["trial-2", "trial-3"]
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trial_statuses == {
        "trial-0": "success",
        "trial-1": "failed",
        "trial-2": "success",
        "trial-3": "success",
    }


async def test_an_analysis_on_a_frozen_worker_runs_again_after_its_heartbeat_timeout(
    harness: Harness,
) -> None:
    """A worker that stops (SIGSTOP, a frozen VM) is noticed by its silence within the heartbeat
    timeout, not after the analysis' whole start-to-close timeout."""
    harness.fake.frozen_analysis_attempts = 1
    trials = trial_refs(2)
    started = time.monotonic()
    handle = await harness.start(task_input(trials, analysis_heartbeat_timeout_sec=1.0))
    assert await finish(handle) == TaskStatus.COMPLETED
    took = time.monotonic() - started
    analysed = [a.trial_id for a in harness.fake.calls("analyze_trial")]
    assert sorted(analysed) == sorted(trial_ids(trials) * 2), "each analysis ran again, once"
    # finish() gives up after WAIT_SEC: without a heartbeat timeout the frozen attempts would
    # hold the task for the analysis' whole start-to-close timeout.
    print(f"\nanalyses on a frozen worker: task done after {took:.1f}s (heartbeat timeout 1 s)")


async def scheduled_activities(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The activity types the workflow scheduled as activity tasks (not local activities)."""
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def test_a_task_puts_its_trials_in_line_in_its_first_workflow_task(
    harness: Harness,
) -> None:
    """Up to LOCAL_SLOT_REQUEST_MAX trials, the task is recorded running and its trials put in
    line by one local activity: no activity task between its start and its first grant. A larger
    task begins the same way with its first LOCAL_SLOT_REQUEST_MAX, and the rest are put in line
    by an activity task (their grants could overflow the server's buffer while a local activity
    holds the workflow task)."""
    fake = harness.fake
    small = await harness.start(task_input(trial_refs(LOCAL_SLOT_REQUEST_MAX)))
    assert await finish(small) == TaskStatus.COMPLETED.value
    assert not {"begin_task", "request_slots"} & set(await scheduled_activities(small))
    assert [len(r.trials) for r in fake.calls("begin_task")] == [LOCAL_SLOT_REQUEST_MAX]

    large = await harness.start(task_input(trial_refs(LOCAL_SLOT_REQUEST_MAX + 3)))
    assert await finish(large) == TaskStatus.COMPLETED.value
    assert (await scheduled_activities(large)).count("request_slots") == 1
    # (The fake's begin_task logs the request it makes as a request_slots call too.)
    begun, rest = fake.calls("begin_task")[1], fake.calls("request_slots")[-1]
    assert len(begun.trials) == LOCAL_SLOT_REQUEST_MAX and len(rest.trials) == 3
    # In line in their order: the first LOCAL_SLOT_REQUEST_MAX, then the rest.
    assert [t.index for t in begun.trials + rest.trials] == list(range(LOCAL_SLOT_REQUEST_MAX + 3))
    assert fake.violations == []


async def test_a_slot_request_returns_the_grants_free_at_once(harness: Harness) -> None:
    """The slots free when a task puts its trials in line come back with the request: those
    trials are scheduled in the workflow task that has the request's result, and none of their
    grants is signalled."""
    fake = harness.fake
    fake.limit = 2
    handle = await harness.start(task_input(trial_refs(5)))
    assert await finish(handle) == TaskStatus.COMPLETED.value
    [request] = fake.calls("begin_task")
    assert request.grant_at_once
    events = [e async for e in handle.fetch_history_events()]
    first_scheduled = [
        e.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "run_trial"
    ]
    assert first_scheduled.count(first_scheduled[0]) == 2
    signals = [
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert len(signals) == 3 and min(signals) > first_scheduled[0]
    assert fake.violations == [] and fake.max_running <= 2


async def test_a_slot_lane_runs_the_trials_handed_its_slot_and_the_workflow_takes_them(
    harness: Harness,
) -> None:
    fake = harness.fake
    fake.limit, fake.lanes = 1, True
    fake.failed_in_lane = {("trial-2", 1)}
    trials = trial_refs(4)
    handle = await harness.start(task_input(trials))

    assert await finish(handle) == TaskStatus.COMPLETED.value

    runs = fake.calls("run_trial")
    assert trial_ids(runs) == trial_ids(trials), "each trial ran once, in line order"
    assert len({r.lane for r in runs}) == 1 and runs[0].lane is not None, "all in one lane"
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trial_statuses == {
        "trial-0": "success",
        "trial-1": "success",
        "trial-2": "failed",
        "trial-3": "success",
    }
    assert sorted(a.trial_id for a in fake.calls("analyze_trial")) == trial_ids(trials)
    assert fake.violations == [] and fake.max_running == 1


async def test_a_trial_failed_in_a_running_lane_can_be_retried_before_the_lane_ends(
    harness: Harness,
) -> None:
    fake = harness.fake
    fake.limit, fake.lanes = 1, True
    fake.failed_in_lane = {("trial-1", 1)}
    fake.gates = {"trial-2": asyncio.Event()}
    handle = await harness.start(task_input(trial_refs(3)))
    await until(lambda: "trial-2" in trial_ids(fake.calls("run_trial")), "the lane at trial-2")

    # trial-1's failure is in the records, not yet in the workflow: the retry is taken.
    result = await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(["trial-1"]))
    assert result.retried == ["trial-1"]
    # Put back in line by that retry, it is not taken for a lane's any more: a second retry (its
    # caller read the record before the first one's request) is refused.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(["trial-1"]))
    assert "trial-1 is queued" in str(refused.value.cause)
    fake.gates["trial-2"].set()

    assert await finish(handle) == TaskStatus.COMPLETED.value
    assert fake.runs == [("trial-0", 1), ("trial-1", 1), ("trial-2", 1), ("trial-1", 2)]
    progress = await handle.query(TaskWorkflow.progress)
    assert set(progress.trial_statuses.values()) == {"success"}, "run 1's failure was superseded"


async def test_a_trial_to_retry_from_a_lane_has_only_its_remaining_attempts(
    harness: Harness,
) -> None:
    fake = harness.fake
    fake.limit, fake.lanes = 1, True
    # Its first attempt, in trial-0's lane, fails to be retried; its activity fails again.
    fake.retried_from_lane = {("trial-1", 1)}
    fake.failing = {("trial-1", 1)}
    handle = await harness.start(task_input(trial_refs(3)))

    assert await finish(handle) == TaskStatus.COMPLETED.value

    own = [r for r in fake.calls("run_trial") if r.trial_id == "trial-1" and r.attempts_spent]
    assert len(own) == 1, "one attempt in the lane and one of its own: max_attempts is 2"
    assert own[0].attempts_spent == 1 and own[0].lane is not None
    assert [f.trial_id for f in fake.calls("fail_trial")] == ["trial-1"]
    progress = await handle.query(TaskWorkflow.progress)
    assert progress.trial_statuses == {
        "trial-0": "success",
        "trial-1": "failed",
        "trial-2": "success",
    }
