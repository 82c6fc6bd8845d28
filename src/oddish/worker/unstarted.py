"""Tasks recorded without a workflow: the submitting process died between the two steps.

A task's rows are written in one statement, then its workflow is started, then the task is
marked started (the mark about 0.2 s later, with others: ``oddish.started_marks``). A process
killed in between leaves a ``pending`` task, unmarked, that nothing may run; workers look at such
tasks: they start the workflow, or mark the task when it has one.
Marked tasks are never looked at again, so a backlog of queued tasks costs the workers nothing.

A backlog of thousands (a submitter that could not reach Temporal for a while) is taken in
batches, oldest first: each batch is described in one go (bounded concurrent calls), its
database work done on one connection, and its workflows started with bounded concurrency, so a
round costs seconds, not a round trip per task in turn, and the dispatcher's grants, which run
beside it, never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from oddish.contracts import TaskWorkflowInput
from oddish.db import records
from oddish.db.connection import get_session
from oddish.queue import workflow_input
from oddish.temporal_gateway import start_task_workflow_run, workflow_statuses
from oddish.workflows import workflow_id_for_task

log = logging.getLogger(__name__)

BATCH = 100
# Workflow starts in flight at once: each is one round trip to Temporal and no database
# connection, so many can overlap without taking connections the dispatcher needs.
START_CONCURRENCY = 16


class UnstartedTaskStarter:
    """Starts the workflows of unmarked tasks older than ``older_than_sec`` (longer than a live
    submitter takes between its steps). Each call looks at the next batch, so however many
    there are, none hides behind the others.
    """

    def __init__(self, client: Client, *, older_than_sec: float) -> None:
        self._client = client
        self._older_than_sec = older_than_sec
        self._after: tuple[datetime, str] | None = None

    async def start_all(self) -> int:
        """One round over every unmarked task, oldest first, batch after batch; returns how
        many workflows were started. A failing batch (Temporal away) ends the round; the next
        round begins again from the oldest."""
        self._after = None
        started = 0
        while True:
            started += await self.start_next_batch()
            if self._after is None:
                return started

    async def start_next_batch(self) -> int:
        """Look at the next batch of pending tasks; returns how many workflows were started."""
        async with get_session() as session:
            batch = await records.unstarted_task_keys(
                session, older_than_sec=self._older_than_sec, after=self._after, limit=BATCH
            )
        self._after = batch[-1] if len(batch) == BATCH else None
        if not batch:
            return 0
        return await self._start_batch([task_id for _, task_id in batch])

    async def _start_batch(self, task_ids: list[str]) -> int:
        statuses = await workflow_statuses(
            self._client, [workflow_id_for_task(task_id) for task_id in task_ids]
        )
        # A task whose describe failed is not in ``statuses``: the next round asks again.
        answered = [t for t in task_ids if workflow_id_for_task(t) in statuses]
        status_of = {t: statuses[workflow_id_for_task(t)] for t in answered}
        running = [t for t in answered if status_of[t] == WorkflowExecutionStatus.RUNNING]
        ended = [t for t in answered if status_of[t] not in (None, WorkflowExecutionStatus.RUNNING)]
        missing = [t for t in answered if status_of[t] is None]
        async with get_session() as session:
            await records.mark_workflows_started(session, running)
            # Its workflow ended before it recorded anything (terminated, say).
            for task_id in ended:
                await records.settle_abandoned_task(session, task_id)
            inputs = [await self._input_of(session, task_id) for task_id in missing]
            await session.commit()
        return await self._start(inputs)

    @staticmethod
    async def _input_of(session: AsyncSession, task_id: str) -> TaskWorkflowInput:
        task = await records.get_task(session, task_id, with_trials=True)
        return workflow_input(task, list(task.trials))

    async def _start(self, inputs: list[TaskWorkflowInput]) -> int:
        """Start each workflow (at most START_CONCURRENCY at once) and mark its task; returns
        how many this call started (rather than found started meanwhile)."""
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(inp: TaskWorkflowInput) -> bool:
            async with gate:
                try:
                    # REJECT_DUPLICATE: a submitter that started it meanwhile wins.
                    await start_task_workflow_run(
                        self._client,
                        inp,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    )
                except WorkflowAlreadyStartedError:
                    return False
                return True

        results = await asyncio.gather(*(start(i) for i in inputs), return_exceptions=True)
        # Started now or by its submitter meanwhile: either way it has a workflow.
        has_workflow = [
            i.task_id for i, r in zip(inputs, results, strict=True) if isinstance(r, bool)
        ]
        if has_workflow:
            async with get_session() as session:
                await records.mark_workflows_started(session, has_workflow)
                await session.commit()
        started = [i.task_id for i, r in zip(inputs, results, strict=True) if r is True]
        for task_id in started:
            log.warning(
                "started the workflow of task %s, which its submitter never started", task_id
            )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning("could not start %d workflows yet: %s", len(failures), failures[0])
            if len(failures) == len(results):
                raise failures[0]
        return len(started)
