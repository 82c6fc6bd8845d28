from oddish.workflows.ids import workflow_id_for_task
from oddish.workflows.task_workflow import TaskWorkflow

ALL_WORKFLOWS = [TaskWorkflow]

__all__ = ["ALL_WORKFLOWS", "TaskWorkflow", "workflow_id_for_task"]
