"""``JudgeAgainWorkflow``: the judge's analyses and verdict of a finished task, again (another
model, say), without running any trial again. One per task at a time (id ``judge/<task_id>``).

Deterministic orchestration only, as ``TaskWorkflow``: the activities are the same
``analyze_trial`` and ``decide_verdict``, on the judge's task queue, with the model given.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

from oddish.contracts import AnalyzeTrialInput, JudgeAgainInput, VerdictInput
from oddish.workflows.task_workflow import ANALYSIS_RETRY, ANALYSIS_TIMEOUT, judge_task_queue

JUDGE_AGAIN_PREFIX = "judge/"


def judge_again_workflow_id(task_id: str) -> str:
    return f"{JUDGE_AGAIN_PREFIX}{task_id}"


@workflow.defn(name="JudgeAgainWorkflow")
class JudgeAgainWorkflow:
    @workflow.run
    async def run(self, inp: JudgeAgainInput) -> str:
        queue = judge_task_queue(workflow.info().task_queue)
        heartbeat = timedelta(seconds=inp.analysis_heartbeat_timeout_sec)
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    "analyze_trial",
                    AnalyzeTrialInput(trial_id, model=inp.analysis_model),
                    start_to_close_timeout=ANALYSIS_TIMEOUT,
                    heartbeat_timeout=heartbeat,
                    retry_policy=ANALYSIS_RETRY,
                    task_queue=queue,
                    summary=f"analyse {trial_id} again",
                )
                for trial_id in inp.trial_ids
            )
        )
        if inp.verdict:
            await workflow.execute_activity(
                "decide_verdict",
                VerdictInput(inp.task_id, model=inp.verdict_model),
                start_to_close_timeout=ANALYSIS_TIMEOUT,
                heartbeat_timeout=heartbeat,
                retry_policy=ANALYSIS_RETRY,
                task_queue=queue,
                summary="verdict again",
            )
        return "completed"
