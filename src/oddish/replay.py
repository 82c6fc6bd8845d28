"""Replaying a task's workflow histories against the installed workflow code.

A replay fails when the code would now make different decisions than the ones recorded: such a
change would break workflows that are running, so it must go behind ``workflow.patched``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from oddish.temporal_gateway import connect, task_workflow_histories
from oddish.workflows import ALL_WORKFLOWS


@dataclass
class RunReplay:
    run_id: str
    events: int
    error: str | None = None


@dataclass
class ReplayReport:
    task_id: str
    runs: list[RunReplay] = field(default_factory=list)

    @property
    def deterministic(self) -> bool:
        return bool(self.runs) and all(r.error is None for r in self.runs)

    @property
    def message(self) -> str:
        if not self.runs:
            return f"task {self.task_id} has no workflow history in Temporal (unknown task id?)"
        if self.deterministic:
            return (
                f"task {self.task_id}: {len(self.runs)} run(s) replayed deterministically "
                "against the installed workflow code"
            )
        failed = [r for r in self.runs if r.error]
        return (
            f"task {self.task_id}: {len(failed)} of {len(self.runs)} run(s) are NOT "
            f"deterministic against the installed workflow code: {failed[0].error}"
        )


async def replay_history(history: WorkflowHistory) -> str | None:
    """None when the history replays cleanly, else the reason it does not."""
    result = await Replayer(workflows=ALL_WORKFLOWS).replay_workflow(
        history, raise_on_replay_failure=False
    )
    return None if result.replay_failure is None else str(result.replay_failure)


async def replay_task(task_id: str, client: Client | None = None) -> ReplayReport:
    """Fetch every run of the task's workflow from Temporal and replay each one."""
    client = client or await connect()
    report = ReplayReport(task_id)
    for history in await task_workflow_histories(client, task_id):
        report.runs.append(
            RunReplay(history.run_id, len(history.events), await replay_history(history))
        )
    return report
