"""Tasks recorded without a workflow: the submitting process died between the two steps.

A task's rows are written in one transaction, then its workflow is started, then the task is
marked started. A process killed in between leaves a ``pending`` task, unmarked, that nothing may
run; workers look at such tasks: they start the workflow, or mark the task when it has one.
Marked tasks are never looked at again, so a backlog of queued tasks costs the workers nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from oddish.db import records
from oddish.db.connection import get_session
from oddish.queue import workflow_input
from oddish.temporal_gateway import start_task_workflow_run, workflow_status
from oddish.workflows import workflow_id_for_task

log = logging.getLogger(__name__)

BATCH = 100


class UnstartedTaskStarter:
    """Starts the workflows of unmarked tasks older than ``older_than_sec`` (longer than a live
    submitter takes between its steps). Each call looks at the next batch, so however many
    there are, none hides behind the others.
    """

    def __init__(self, client: Client, *, older_than_sec: float) -> None:
        self._client = client
        self._older_than_sec = older_than_sec
        self._after: tuple[datetime, str] | None = None

    async def start_next_batch(self) -> int:
        """Look at the next batch of pending tasks; returns how many workflows were started."""
        async with get_session() as session:
            batch = await records.unstarted_task_keys(
                session, older_than_sec=self._older_than_sec, after=self._after, limit=BATCH
            )
        self._after = batch[-1] if len(batch) == BATCH else None
        started = 0
        for _, task_id in batch:
            started += await self._start_if_unstarted(task_id)
        return started

    async def _start_if_unstarted(self, task_id: str) -> bool:
        status = await workflow_status(self._client, workflow_id_for_task(task_id))
        if status == WorkflowExecutionStatus.RUNNING:
            await self._mark_started(task_id)
            return False
        if status is not None:
            # Its workflow ended before it recorded anything (terminated, say).
            async with get_session() as session:
                await records.settle_abandoned_task(session, task_id)
                await session.commit()
            return False
        async with get_session() as session:
            task = await records.get_task(session, task_id, with_trials=True)
        try:
            # REJECT_DUPLICATE: a submitter that started it meanwhile wins.
            await start_task_workflow_run(
                self._client,
                workflow_input(task, list(task.trials)),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            await self._mark_started(task_id)
            return False
        await self._mark_started(task_id)
        log.warning("started the workflow of task %s, which its submitter never started", task_id)
        return True

    async def _mark_started(self, task_id: str) -> None:
        async with get_session() as session:
            await records.mark_workflow_started(session, task_id)
            await session.commit()
