"""Tasks recorded without a workflow: the submitting process died between the two steps.

A task's rows are written in one transaction, then its workflow is started. A process killed in
between leaves a ``pending`` task that nothing runs; workers find such tasks and start them.
Starting is idempotent (REJECT_DUPLICATE), so a task whose workflow did start is left alone.
"""

from __future__ import annotations

import logging

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from oddish.db import records
from oddish.db.connection import get_session
from oddish.queue import start_workflow_run, workflow_input
from oddish.workflows import workflow_id_for_task

log = logging.getLogger(__name__)

BATCH = 100


async def start_unstarted_tasks(client: Client, *, older_than_sec: float) -> int:
    """Start the workflows of tasks pending for longer than ``older_than_sec`` (longer than a
    live submitter takes between its two steps); returns how many were started."""
    async with get_session() as session:
        tasks = await records.pending_tasks(session, older_than_sec=older_than_sec, limit=BATCH)
    started = 0
    for task in tasks:
        try:
            await start_workflow_run(client, workflow_input(task, list(task.trials)),
                                     id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except WorkflowAlreadyStartedError:
            handle = client.get_workflow_handle(workflow_id_for_task(task.id))
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                # Its workflow ended before it recorded anything (terminated, say).
                async with get_session() as session:
                    await records.settle_abandoned_task(session, task.id)
                    await session.commit()
            continue
        started += 1
        log.warning("started the workflow of task %s, which its submitter never started", task.id)
    return started
