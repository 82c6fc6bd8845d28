"""Running again the trials that did not pass (partial, failed, error, cancelled): an Update to
a workflow still running, a new run of a finished one."""

from __future__ import annotations

import asyncio

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from oddish.db import records
from oddish.db.connection import get_session
from oddish.db.models import TrialModel
from oddish.outcomes import trial_result
from oddish.queue import workflow_input
from oddish.statuses import RETRYABLE_RESULTS
from oddish.temporal_gateway import retry_trials, start_task_workflow_run, task_workflow_running
from oddish.workflows.task_workflow import TASK_FINISHING

# A workflow between its last round and its end refuses Updates; by then it is about to close.
FINISHING_WAIT_SEC = 0.5
MAX_ROUNDS = 40


NOTHING_FAILED = "no trials that did not pass (failed, partial, error or cancelled)"


class RetryRefused(ValueError):
    """Nothing to retry: the trials passed or have not finished, or are being retried already."""


def retryable(trial: TrialModel) -> bool:
    """Finished without passing: a reward below 1 (recorded ``success`` or not), an error, a
    cancel."""
    return trial_result(trial.status, trial.outcome, trial.reward) in RETRYABLE_RESULTS


def _why_not(trial: TrialModel) -> str:
    result = trial_result(trial.status, trial.outcome, trial.reward)
    return f"{trial.id} {'is ' + trial.status if result is None else 'has ' + result}"


async def retry_task(
    task_id: str, *, client: Client, trial_ids: list[str] | None = None
) -> list[str]:
    """Run the task's trials that did not pass (or those of ``trial_ids``) again.

    Returns the retried trial ids. Raises RecordNotFound for unknown ids and RetryRefused when
    there is nothing to retry.
    """
    for _ in range(MAX_ROUNDS):
        async with get_session() as session:
            # The trial rows, not their attempts and analyses: a retry reads statuses and refs.
            task = await records.task_with_trial_refs(session, task_id)
        trials = {t.id: t for t in task.trials}
        if trial_ids is None:
            chosen = [t.id for t in task.trials if retryable(t)]
            if not chosen:
                raise RetryRefused(f"task {task_id} has {NOTHING_FAILED}")
        else:
            chosen = list(dict.fromkeys(trial_ids))
            unknown = [t for t in chosen if t not in trials]
            if unknown:
                raise records.RecordNotFound(f"no trial {unknown[0]!r} in task {task_id!r}")
            busy = [trials[t] for t in chosen if not retryable(trials[t])]
            if busy:
                raise RetryRefused(
                    "only finished trials that did not pass (failed, partial, error or "
                    "cancelled) can be retried; " + ", ".join(_why_not(t) for t in busy)
                )

        if not await task_workflow_running(client, task_id):
            inp = workflow_input(task, list(task.trials), rerun=set(chosen))
            try:
                await start_task_workflow_run(
                    client, inp, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE
                )
                return chosen
            except WorkflowAlreadyStartedError:
                continue  # another retry started a run first: ask that run instead

        try:
            return (await retry_trials(client, task_id, chosen)).retried
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == TASK_FINISHING:
                await asyncio.sleep(FINISHING_WAIT_SEC)
                continue
            # The validator's refusal arrives as an ApplicationError; anything else says little.
            reason = cause.message if isinstance(cause, FailureError) else str(cause or exc)
            raise RetryRefused(reason) from exc
        except RPCError as exc:
            # The run closed between describe and update: the next round starts a new one.
            if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise
    raise RetryRefused(f"task {task_id} kept changing state; try the retry again")


async def retry_trial(trial_id: str, *, client: Client) -> tuple[str, list[str]]:
    async with get_session() as session:
        trial = await records.get_trial(session, trial_id)
    return trial.task_id, await retry_task(trial.task_id, client=client, trial_ids=[trial_id])


async def retry_experiment(experiment_id: str, *, client: Client) -> list[tuple[str, list[str]]]:
    """Retry every task of the experiment that has trials that did not pass."""
    async with get_session() as session:
        # Chosen by Postgres; each task's trials are read when that task is retried.
        task_ids = await records.experiment_task_ids(
            session, experiment_id, with_retryable_trials=True
        )
    if not task_ids:
        raise RetryRefused(f"experiment {experiment_id} has {NOTHING_FAILED}")
    retried = []
    for task_id in task_ids:
        try:
            retried.append((task_id, await retry_task(task_id, client=client)))
        except RetryRefused:
            continue  # its failed trials were retried meanwhile
    return retried
