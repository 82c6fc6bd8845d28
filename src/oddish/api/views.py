"""What each route answers, as pydantic models: the OpenAPI schema's response models.

Every view lets unknown fields through (``extra="allow"``), so a field a route starts returning
before its model declares it is never silently dropped from an answer; the routes answer with
``response_model_exclude_unset``, so a field the answer lacks is not added as null. The tests
validate real answers against these models and fail on any field a model does not declare
(tests/integration/test_original_routes.py), which keeps the schema complete.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

# Times are ISO 8601 strings as the records give them (passed through, not re-formatted).
IsoTime = str


class View(BaseModel):
    model_config = ConfigDict(extra="allow")


class WorkerReport(View):
    temporal_worker: str
    temporal_error: str | None
    dispatcher: str
    dispatcher_last_round_sec_ago: float | None


class Health(View):
    status: str = Field(examples=["ok"], description="ok, or degraded (Temporal or the worker)")
    database: str = Field(examples=["ok"])
    temporal: str = Field(examples=["connected"])
    worker: WorkerReport | str = Field(description="the worker in the API's process, if any")


class Uploaded(View):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "upload_id": "5d41402abc4b2a76b9719d911017c592" * 2,
                    "content_hash": "9b74c9897bac770ffc029102a200c5de" * 2,
                    "name": "hello-pass",
                    "files": 5,
                    "bytes": 1093,
                    "reused": False,
                }
            ]
        }
    )

    upload_id: str = Field(description="what POST /tasks/sweep takes")
    content_hash: str = Field(description="sha256 of the task's files")
    name: str
    files: int
    bytes: int = Field(description="unpacked size")
    reused: bool = Field(description="the same task was uploaded before: that copy is used")


class SweepCreated(View):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "task-3f2a9c1e5b7d4a6f8e0c2b1d",
                    "experiment": "brave-otter-42",
                    "trials_count": 2,
                    "url": "http://127.0.0.1:8000/tasks/task-3f2a9c1e5b7d4a6f8e0c2b1d",
                }
            ]
        }
    )

    id: str
    experiment: str = Field(description="the experiment's id")
    trials_count: int
    url: str
    warning: str | None = Field(
        default=None, description="only with 202: why the workflow has not started yet"
    )


class JudgeSaid(View):
    """What the judge answered of a trial (classification ...) or of a task (is_good ...), the
    model that answered, what it cost, and the error when it gave no usable answer."""

    classification: str | None = None
    subtype: str | None = None
    evidence: str | None = None
    root_cause: str | None = None
    recommendation: str | None = None
    corrected_from: str | None = Field(
        default=None, description="what it said before its class was set on the reward's side"
    )
    is_good: bool | None = None
    confidence: str | None = None
    primary_issue: str | None = None
    recommendations: list[str] | None = None
    reasoning: str | None = None
    raw_answers: list[Any] | None = Field(
        default=None, description="answers that did not fit the schema"
    )
    provider_retries: Any = Field(default=None, description="transient failures waited out")
    model: str
    n_input_tokens: int | None
    n_output_tokens: int | None
    cost_usd: float | None
    error: str | None


class PassAt1(View):
    estimate: float = Field(description="passed / scored")
    low: float
    high: float
    confidence: float = Field(examples=[0.95])
    interval: str = Field(examples=["wilson"])


class PassAtK(View):
    k: int
    estimate: float = Field(description="mean over tasks of the unbiased pass@k (Chen et al.)")
    tasks: int = Field(description="tasks with at least k scored trials")


class Scores(View):
    """oddish.pass_rates' figures, over the trials that got a reward; errors counted apart."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tasks": 1,
                    "trials": 2,
                    "results": {"passed": 1, "failed": 1, "unfinished": 0},
                    "scored": 2,
                    "passed": 1,
                    "errored": 0,
                    "mean_reward": 0.5,
                    "pass_at_1": {
                        "estimate": 0.5,
                        "low": 0.09,
                        "high": 0.91,
                        "confidence": 0.95,
                        "interval": "wilson",
                    },
                    "pass_at_k": [{"k": 1, "estimate": 0.5, "tasks": 1}],
                    "errors": {},
                }
            ]
        }
    )

    tasks: int
    trials: int
    results: dict[str, int] = Field(description="trials per result, and unfinished")
    scored: int
    passed: int
    errored: int
    mean_reward: float | None
    pass_at_1: PassAt1 | None
    pass_at_k: list[PassAtK] | None = Field(
        default=None, description="absent from lists of tasks (a task's own view has it)"
    )
    errors: dict[str, int] = Field(description="errored trials per kind")


class Attempt(View):
    number: int
    run_number: int
    temporal_attempt: int
    worker: str | None
    status: str
    reward: float | None
    rewards: dict[str, Any] | None
    outcome: str | None
    error_type: str | None
    error_message: str | None
    harbor_trial_dir: str | None
    started_at: IsoTime | None
    finished_at: IsoTime | None


class Analysis(View):
    status: str
    classification: str | None = Field(description="the rule-based classification (outcome)")
    summary: str | None
    details: dict[str, Any] | None
    analyzer: str | None
    finished_at: IsoTime | None
    judge: JudgeSaid | None


class Trial(View):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "trial-3f2a9c1e-0",
                    "task_id": "task-3f2a9c1e5b7d4a6f8e0c2b1d",
                    "index": 0,
                    "agent": "oracle",
                    "model": None,
                    "queue_key": "default",
                    "environment": "local",
                    "status": "success",
                    "outcome": "success",
                    "reward": 1.0,
                    "rewards": {"reward": 1.0},
                }
            ]
        }
    )

    id: str
    task_id: str
    index: int
    agent: str
    model: str | None
    queue_key: str
    environment: str
    status: str
    outcome: str | None
    reward: float | None
    rewards: dict[str, Any] | None
    error_type: str | None
    error_message: str | None
    timings: dict[str, Any] | None
    n_input_tokens: int | None
    n_cache_tokens: int | None
    n_output_tokens: int | None
    cost_usd: float | None
    harbor_trial_dir: str | None
    harbor_config: dict[str, Any] | None
    result: str | None = Field(
        description="passed, partial, failed, error, cancelled, unscored; null until finished"
    )
    started_at: IsoTime | None
    finished_at: IsoTime | None
    attempts: list[Attempt]
    analysis: Analysis | None


class Verdict(View):
    status: str
    summary: str | None
    details: dict[str, Any] | None
    decider: str | None
    finished_at: IsoTime | None
    judge: JudgeSaid | None


class JudgeUsage(View):
    calls: int
    errors: int
    n_input_tokens: int
    n_output_tokens: int
    cost_usd: float | None


class TaskFields(View):
    id: str
    name: str
    experiment_id: str
    status: str
    priority: int
    user: str | None
    created_at: IsoTime
    finished_at: IsoTime | None
    error_message: str | None


class TaskDetail(TaskFields):
    run_analysis: bool
    workflow_id: str
    started_at: IsoTime | None
    trials: list[Trial]
    scores: Scores
    verdict: Verdict | None
    analysis_model: str | None
    verdict_model: str | None
    judge_usage: JudgeUsage


class VerdictBrief(View):
    status: str
    summary: str | None
    judge: JudgeSaid | None


class TaskSummary(TaskFields):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "task-3f2a9c1e5b7d4a6f8e0c2b1d",
                    "name": "hello-pass",
                    "experiment_id": "brave-otter-42",
                    "status": "completed",
                    "priority": 0,
                    "user": "alice",
                    "created_at": "2026-01-01T12:00:00+00:00",
                    "finished_at": "2026-01-01T12:00:09+00:00",
                    "error_message": None,
                    "trials_count": 2,
                    "trials_finished": 2,
                    "trial_status_counts": {"success": 2},
                    "mean_reward": 1.0,
                    "verdict": {"status": "success", "summary": "2/2 passed", "judge": None},
                }
            ]
        }
    )

    trials_count: int
    trials_finished: int
    trial_status_counts: dict[str, int]
    mean_reward: float | None = Field(description="of finished trials, a missing reward as 0")
    scores: Scores
    verdict: VerdictBrief | None


class TaskPage(View):
    tasks: list[TaskSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="null on the last page")


class TaskList(RootModel[TaskPage | list[TaskDetail] | list[TaskSummary]]):
    """GET /tasks: a page, or with the original Oddish's parameters (experiment_id=,
    include_trials=) a bare list of tasks, with their trials unless include_trials=false."""


class TrialStats(View):
    trials: int
    passed: int = Field(description="trials with reward >= 1")
    pass_rate: float | None
    mean_reward: float | None
    status_counts: dict[str, int]
    outcome_counts: dict[str, int]
    scores: Scores


class AgentModelStats(TrialStats):
    agent: str
    model: str | None


class ExperimentListed(View):
    id: str
    name: str
    created_at: IsoTime
    tasks_count: int
    trials_count: int
    trials_finished: int
    trials_scored: int = Field(description="trials that got a reward")
    trials_passed: int
    trials_errored: int = Field(description="ended in an error or cancelled")
    pass_at_1: float | None = Field(description="passed / scored")
    cost_usd: float | None = Field(description="the agents' cost, when any reported one")


class AgentUsage(View):
    n_input_tokens: int
    n_cache_tokens: int
    n_output_tokens: int
    cost_usd: float | None
    mean_duration_sec: float | None = Field(description="of the trials that ran to an end")


class MatrixCell(View):
    trials: int
    finished: int
    scored: int
    passed: int
    errored: int
    pass_rate: float | None = Field(description="passed / scored; null while none is scored")


class Experiment(View):
    id: str
    name: str
    created_at: IsoTime
    tasks: list[TaskSummary] = Field(description="one page (tasks_limit, tasks_offset)")
    tasks_total: int
    tasks_offset: int
    tasks_next_offset: int | None
    overall: TrialStats
    by_agent_model: dict[str, AgentModelStats] = Field(description="keyed agent or agent/model")
    judge_usage: JudgeUsage
    agent_usage: AgentUsage
    agent_usage_by_agent_model: dict[str, AgentUsage]
    matrix: dict[str, dict[str, MatrixCell]] = Field(
        description="the page's tasks by id, then by agent/model"
    )


class TrialBrief(View):
    id: str
    task_id: str
    index: int
    agent: str
    model: str | None
    queue_key: str
    environment: str
    status: str
    reward: float | None
    rewards: dict[str, Any] | None
    outcome: str | None
    error_type: str | None
    error_message: str | None
    run_number: int
    n_input_tokens: int | None
    n_output_tokens: int | None
    cost_usd: float | None
    result: str | None
    started_at: IsoTime | None
    finished_at: IsoTime | None


class ExperimentTrials(View):
    experiment_id: str
    trials: list[TrialBrief]
    next_after: str | None = Field(description="the next page's `after`; null on the last")


class TrialLogs(View):
    trial_id: str
    files: dict[str, str] = Field(
        description="text by relative path, each its last 1 MB; a last entry says what was "
        "left out, if anything"
    )


class HarborTrialResult(RootModel[dict[str, Any]]):
    """Harbor's result.json of the latest attempt, as Harbor wrote it."""


class TaskCancelled(View):
    id: str
    status: str = Field(examples=["cancelling"], description="cancelling, or as it ended")


class ExperimentCancelled(View):
    experiment_id: str
    tasks: list[TaskCancelled]


class Retried(View):
    task_id: str
    retried: list[str] = Field(description="the trials that run again")


class ExperimentRetried(View):
    experiment_id: str
    tasks: list[Retried]


class TaskDeleted(View):
    id: str
    deleted: bool


class ExperimentDeleted(TaskDeleted):
    tasks_deleted: int


class QueueStats(View):
    waiting: int
    running: int
    limit: int


class Limits(View):
    default: int = Field(description="the limit of keys without one of their own")
    queues: dict[str, QueueStats]


class LimitSet(View):
    queue_key: str = Field(description="the key it applies to (a model, normalised)")
    limit: int
