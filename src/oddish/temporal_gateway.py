"""Every call oddish makes to Temporal as a client: connecting, then starting, describing,
cancelling, terminating, retrying and granting slots to task workflows, always through the
workflow's typed references, so a renamed signal or update cannot be missed at one call site."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from oddish import search_attributes as sa
from oddish.config import get_settings
from oddish.contracts import (
    JudgeAgainInput,
    RetryTrialsRequest,
    RetryTrialsResult,
    SlotGrant,
    TaskWorkflowInput,
)
from oddish.statuses import TaskStatus
from oddish.workflows import (
    JudgeAgainWorkflow,
    TaskWorkflow,
    judge_again_workflow_id,
    workflow_id_for_task,
)

log = logging.getLogger(__name__)


class TemporalNotConfigured(RuntimeError):
    pass


class TemporalUnavailable(RuntimeError):
    """Temporal has not answered yet; the caller is to try again shortly."""


# Between connection attempts: quick at first (a server starting), then every 30 s at most.
RECONNECT_FIRST_SEC = 1.0
RECONNECT_MAX_SEC = 30.0


def reconnect_delays() -> Iterator[float]:
    delay = RECONNECT_FIRST_SEC
    while True:
        yield delay
        delay = min(delay * 2, RECONNECT_MAX_SEC)


class TemporalConnection:
    """A client that connects in the background, retrying for ever with backoff, so that a
    process started while Temporal is down comes up all the same and catches up once it is back.
    """

    def __init__(self, address: str | None = None) -> None:
        self._address = address
        self.client: Client | None = None
        self.error: str | None = None

    def require(self) -> Client:
        if self.client is None:
            raise TemporalUnavailable(
                f"Temporal cannot be reached yet ({self.error or 'connecting'})"
            )
        return self.client

    async def keep_connecting(self, stop: asyncio.Event) -> None:
        for delay in reconnect_delays():
            try:
                self.client = await connect(self._address)
                self.error = None
                return
            except TemporalNotConfigured:
                raise
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("Temporal not reachable (%s); trying again in %.0fs", self.error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return


async def ensure_search_attributes(client: Client) -> list[str]:
    """Add any of our search attributes the server lacks; returns the names added."""
    namespace = client.namespace
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
        for key in sa.ALL
        if key.name not in existing.custom_attributes
    }
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as exc:
        # Another process registered them first.
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    log.info("registered search attributes %s", sorted(missing))
    return sorted(missing)


async def connect(address: str | None = None) -> Client:
    settings = get_settings()
    target = address or settings.temporal_address
    if not target:
        raise TemporalNotConfigured(
            "no Temporal server configured: set ODDISH_TEMPORAL_ADDRESS (e.g. localhost:7233)"
        )
    client = await Client.connect(target, namespace=settings.temporal_namespace)
    await ensure_search_attributes(client)
    return client


async def start_task_workflow_run(
    client: Client,
    inp: TaskWorkflowInput,
    *,
    id_reuse_policy: WorkflowIDReusePolicy,
    task_queue: str | None = None,
) -> None:
    """Start a run of the task's workflow (on the configured task queue unless ``task_queue``
    says otherwise); raises WorkflowAlreadyStartedError when one runs (or, with
    REJECT_DUPLICATE, has ever run)."""
    queue_keys = sorted({t.queue_key for t in inp.trials})
    await client.start_workflow(
        TaskWorkflow.run,
        inp,
        id=workflow_id_for_task(inp.task_id),
        task_queue=task_queue or get_settings().temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        id_reuse_policy=id_reuse_policy,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.EXPERIMENT, inp.experiment_id),
                SearchAttributePair(sa.TASK, inp.task_id),
                SearchAttributePair(sa.STATUS, TaskStatus.PENDING.value),
                SearchAttributePair(sa.QUEUE_KEYS, queue_keys),
            ]
        ),
        static_summary=f"{inp.task_name} · {len(inp.trials)} trials · {', '.join(queue_keys)}",
    )


async def start_task_workflow(client: Client, inp: TaskWorkflowInput) -> None:
    """Start the task's workflow; starting it again (a retried submission) is a no-op,
    whether the first run is still going or has finished."""
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await start_task_workflow_run(
            client, inp, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE
        )


async def start_judge_again(client: Client, inp: JudgeAgainInput) -> str:
    """Start the judge again on a finished task; its workflow id. WorkflowAlreadyStartedError
    while the judge is still at it for that task."""
    workflow_id = judge_again_workflow_id(inp.task_id)
    await client.start_workflow(
        JudgeAgainWorkflow.run,
        inp,
        id=workflow_id,
        task_queue=get_settings().temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"judge again · {len(inp.trial_ids)} trials"
        + (" · verdict" if inp.verdict else "")
        + f" · {inp.analysis_model}",
    )
    return workflow_id


async def workflow_status(
    client: Client,
    workflow_id: str,
    *,
    run_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> WorkflowExecutionStatus | None:
    """The status of the workflow's latest run (or of ``run_id``); None when Temporal does not
    know it. Other RPC errors (Temporal unreachable) are raised."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        return (await handle.describe(rpc_timeout=rpc_timeout)).status
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


# Describes in flight at once when asking about many workflows: enough to cover a round trip's
# latency many times over, few enough not to flood a server that also runs the workflows.
STATUS_CONCURRENCY = 32


async def workflow_statuses(
    client: Client, workflow_ids: Sequence[str], *, concurrency: int = STATUS_CONCURRENCY
) -> dict[str, WorkflowExecutionStatus | None]:
    """The status of each workflow's latest run (None when Temporal does not know it), asked
    with at most ``concurrency`` describes in flight rather than one after another. A describe
    run against the workflow itself, not visibility, so the answer never lags behind a run that
    just closed or started. A workflow whose describe failed otherwise is left out (ask again
    later); when every one failed, the first error is raised (Temporal unreachable)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str) -> WorkflowExecutionStatus | None:
        async with gate:
            return await workflow_status(client, workflow_id)

    answers = await asyncio.gather(*(one(w) for w in workflow_ids), return_exceptions=True)
    statuses: dict[str, WorkflowExecutionStatus | None] = {}
    errors: list[BaseException] = []
    for workflow_id, answer in zip(workflow_ids, answers, strict=True):
        if isinstance(answer, BaseException):
            errors.append(answer)
        else:
            statuses[workflow_id] = answer
    if errors and not statuses:
        raise errors[0]
    if errors:
        log.warning("%d of %d workflows could not be described", len(errors), len(workflow_ids))
    return statuses


async def task_workflow_running(client: Client, task_id: str) -> bool:
    status = await workflow_status(client, workflow_id_for_task(task_id))
    return status == WorkflowExecutionStatus.RUNNING


async def cancel_task_workflow(client: Client, task_id: str) -> None:
    await client.get_workflow_handle_for(TaskWorkflow.run, workflow_id_for_task(task_id)).cancel()


async def terminate_task_workflow(client: Client, task_id: str, reason: str) -> None:
    handle = client.get_workflow_handle_for(TaskWorkflow.run, workflow_id_for_task(task_id))
    await handle.terminate(reason)


async def retry_trials(client: Client, task_id: str, trial_ids: list[str]) -> RetryTrialsResult:
    """Ask the task's running workflow to run these trials again. Raises
    WorkflowUpdateFailedError when the workflow refuses, RPCError when no run is open."""
    handle = client.get_workflow_handle_for(TaskWorkflow.run, workflow_id_for_task(task_id))
    return await handle.execute_update(TaskWorkflow.retry_trials, RetryTrialsRequest(trial_ids))


async def grant_slot(client: Client, workflow_id: str, grant: SlotGrant) -> bool:
    """Tell a workflow its trial holds a slot: True when told, False when the workflow no
    longer runs (the caller gives the slot back)."""
    handle = client.get_workflow_handle_for(TaskWorkflow.run, workflow_id)
    try:
        await handle.signal(TaskWorkflow.slot_granted, grant)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def task_workflow_histories(client: Client, task_id: str) -> list[WorkflowHistory]:
    """The history of every run of the task's workflow, oldest first."""
    workflow_id = workflow_id_for_task(task_id)
    run_ids: list[str | None] = [
        w.run_id async for w in client.list_workflows(f'WorkflowId = "{workflow_id}"')
    ]
    if not run_ids:  # visibility can lag behind a run just started
        run_ids = [None]
    histories = []
    for run_id in reversed(run_ids):
        try:
            histories.append(
                await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return histories
