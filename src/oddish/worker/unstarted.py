"""Tasks recorded without a workflow: the submitting process died between the two steps.

A task's rows are written in one transaction, then its workflow is started. A process killed in
between leaves a ``pending`` task that nothing runs; workers find such tasks and start them.
"""

from __future__ import annotations

import logging
from datetime import datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from oddish.db import records
from oddish.db.connection import get_session
from oddish.queue import start_workflow_run, workflow_input
from oddish.workflows import workflow_id_for_task

log = logging.getLogger(__name__)

BATCH = 100


class UnstartedTaskStarter:
    """Starts the workflows of tasks pending for longer than ``older_than_sec`` (longer than a
    live submitter takes between its two steps).

    Most pending tasks have a workflow that no worker has reached yet (a backlog, or a task
    queue without workers); each call looks at the next batch, so such tasks can never hide an
    unstarted one behind them.
    """

    def __init__(self, client: Client, *, older_than_sec: float) -> None:
        self._client = client
        self._older_than_sec = older_than_sec
        self._after: tuple[datetime, str] | None = None

    async def start_next_batch(self) -> int:
        """Look at the next batch of pending tasks; returns how many workflows were started."""
        async with get_session() as session:
            batch = await records.pending_task_keys(
                session, older_than_sec=self._older_than_sec, after=self._after, limit=BATCH)
        self._after = batch[-1] if len(batch) == BATCH else None
        started = 0
        for _, task_id in batch:
            started += await self._start_if_unstarted(task_id)
        return started

    async def _start_if_unstarted(self, task_id: str) -> bool:
        handle = self._client.get_workflow_handle(workflow_id_for_task(task_id))
        try:
            status = (await handle.describe()).status
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            status = None
        if status == WorkflowExecutionStatus.RUNNING:
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
            await start_workflow_run(self._client, workflow_input(task, list(task.trials)),
                                     id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except WorkflowAlreadyStartedError:
            return False
        log.warning("started the workflow of task %s, which its submitter never started", task_id)
        return True
