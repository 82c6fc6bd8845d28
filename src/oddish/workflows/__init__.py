from oddish.workflows.task_workflow import TaskWorkflow, workflow_id_for_task

ALL_WORKFLOWS = [TaskWorkflow]

__all__ = ["ALL_WORKFLOWS", "TaskWorkflow", "workflow_id_for_task"]
