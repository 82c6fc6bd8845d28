from oddish.workflows.ids import workflow_id_for_task
from oddish.workflows.judge_again import JudgeAgainWorkflow, judge_again_workflow_id
from oddish.workflows.task_workflow import TaskWorkflow, TrialBatchWorkflow

ALL_WORKFLOWS = [TaskWorkflow, TrialBatchWorkflow, JudgeAgainWorkflow]

__all__ = [
    "ALL_WORKFLOWS",
    "JudgeAgainWorkflow",
    "TaskWorkflow",
    "TrialBatchWorkflow",
    "judge_again_workflow_id",
    "workflow_id_for_task",
]
