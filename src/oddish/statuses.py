"""Statuses of tasks, trials, analyses and verdicts, as stored in Postgres."""

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    ANALYZING = "analyzing"
    VERDICT_PENDING = "verdict_pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobStatus(StrEnum):
    """Status of a trial, an analysis or a verdict."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    # The trial ended with a task outcome (agent timeout, missing reward, ...): recorded, not
    # retried.
    FAILED = "failed"
    # Infrastructure failure: Temporal retries the trial.
    INFRA_ERROR = "infra_error"
    # The worker running the attempt vanished (found when the next attempt starts).
    LOST = "lost"
    CANCELLED = "cancelled"


class OutcomeKind(StrEnum):
    """What a finished trial amounted to; the rule-based analysis reports it."""

    SUCCESS = "success"
    PARTIAL = "partial"
    TASK_FAILURE = "task_failure"
    AGENT_FAILURE = "agent_failure"
    AGENT_TIMEOUT = "agent_timeout"
    VERIFIER_ERROR = "verifier_error"
    INFRASTRUCTURE_ERROR = "infrastructure_error"
    CANCELLED = "cancelled"


TERMINAL_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
# A trial, analysis or verdict in one of these is done; a trial may still be retried.
TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED})
WAITING_JOB_STATUSES = frozenset({JobStatus.PENDING, JobStatus.QUEUED})
RETRYABLE_TRIAL_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
# Trials with a result the judge can analyse (a cancelled trial has none).
JUDGEABLE_TRIAL_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILED})
