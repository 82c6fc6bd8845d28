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


class TrialResult(StrEnum):
    """What a finished trial amounted to for whoever ran it (``oddish.outcomes.trial_result``
    decides it from the status, the outcome and the reward; ``OutcomeKind`` says why)."""

    # The reward is 1 or more: Harbor's convention for a solved task.
    PASSED = "passed"
    # A reward between 0 and 1.
    PARTIAL = "partial"
    # Scored 0 (or less): the agent ran and did not solve it, a timeout of the agent included.
    FAILED = "failed"
    # No reward because something other than the agent failed: infrastructure, the verifier.
    ERROR = "error"
    CANCELLED = "cancelled"
    # Ran to its end with verification disabled: nothing scored it.
    UNSCORED = "unscored"


# Outcomes that leave a trial without a reward the agent earned.
ERROR_OUTCOMES = frozenset({OutcomeKind.INFRASTRUCTURE_ERROR, OutcomeKind.VERIFIER_ERROR})
# Results that carry a reward: the trials pass rates and mean rewards are taken over.
SCORED_RESULTS = frozenset({TrialResult.PASSED, TrialResult.PARTIAL, TrialResult.FAILED})
# What did not pass, and may be run again.
RETRYABLE_RESULTS = frozenset(
    {TrialResult.PARTIAL, TrialResult.FAILED, TrialResult.ERROR, TrialResult.CANCELLED}
)
# Results that make a run exit 1 (a trial that got no reward it could be judged by).
ERROR_RESULTS = frozenset({TrialResult.ERROR, TrialResult.CANCELLED})

TERMINAL_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
# A trial, analysis or verdict in one of these is done; a trial may still be retried.
TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED})
WAITING_JOB_STATUSES = frozenset({JobStatus.PENDING, JobStatus.QUEUED})
# The statuses a trial may be retried from: any finished one. Which finished trials may be
# retried is decided by their result (RETRYABLE_RESULTS: whatever did not pass, a reward of 0
# recorded as ``success`` included), which needs the reward: the records are asked first
# (``oddish.task_retry``), a running workflow only refuses trials that have not finished.
RETRYABLE_TRIAL_STATUSES = TERMINAL_JOB_STATUSES
# Trials with a result the judge can analyse (a cancelled trial has none).
JUDGEABLE_TRIAL_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILED})
