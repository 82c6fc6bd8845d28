"""Workflow ids: ``task/<task_id>``, one workflow per task."""

PREFIX = "task/"


def workflow_id_for_task(task_id: str) -> str:
    return f"{PREFIX}{task_id}"


def task_id_of_workflow(workflow_id: str) -> str | None:
    return workflow_id.removeprefix(PREFIX) if workflow_id.startswith(PREFIX) else None
