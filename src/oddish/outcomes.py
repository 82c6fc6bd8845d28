"""Classifies what Harbor reported for a trial: a task outcome to record, or an infrastructure
failure to retry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from oddish.statuses import (
    ERROR_OUTCOMES,
    TERMINAL_JOB_STATUSES,
    JobStatus,
    OutcomeKind,
    TrialResult,
)

# Harbor's convention: a reward of 1 (or more) solves the task.
PASS_REWARD = 1.0

AGENT_TIMEOUT_ERRORS = {"AgentTimeoutError"}
VERIFIER_ERRORS = {
    "VerifierTimeoutError",
    "RewardFileNotFoundError",
    "RewardFileEmptyError",
    "VerifierOutputParseError",
}
# The agent ran and failed in a way another attempt would repeat.
AGENT_FAILURE_ERRORS = {
    "NonZeroAgentExitCodeError",
    "ContextWindowExceededError",
    "ContextLengthExceededError",
    "OutputTokenExceededError",
    "OutputLengthExceededError",
    "AgentSafetyRefusalError",
    "AgentAuthenticationError",
    "ModelNotFoundError",
    "ApiUsageLimitError",
    "ApiProviderResourceNotFoundError",
    "UnknownApiError",
}
# Everything else (environment start, sandbox and provider errors, transient LLM API errors,
# a lost worker) is infrastructure: retried with backoff up to the configured number of attempts.
TASK_OUTCOME_ERRORS = AGENT_TIMEOUT_ERRORS | VERIFIER_ERRORS | AGENT_FAILURE_ERRORS


@dataclass(frozen=True)
class Classification:
    status: JobStatus
    outcome: OutcomeKind
    reward: float | None
    retryable: bool


def main_reward(rewards: dict[str, Any] | None) -> float | None:
    """Harbor's rewards dict -> the one number a trial is scored by (``reward`` if present)."""
    if not rewards:
        return None
    if "reward" in rewards:
        return float(rewards["reward"])
    if len(rewards) == 1:
        return float(next(iter(rewards.values())))
    return sum(float(v) for v in rewards.values()) / len(rewards)


def classify(exception_type: str | None, rewards: dict[str, Any] | None) -> Classification:
    reward = main_reward(rewards)
    if exception_type is None:
        if reward is None:
            # Verification disabled: the trial ran, nothing scored it.
            return Classification(JobStatus.SUCCESS, OutcomeKind.SUCCESS, None, False)
        if reward >= 1.0:
            kind = OutcomeKind.SUCCESS
        elif reward > 0.0:
            kind = OutcomeKind.PARTIAL
        else:
            kind = OutcomeKind.TASK_FAILURE
        return Classification(JobStatus.SUCCESS, kind, reward, False)
    if exception_type in AGENT_TIMEOUT_ERRORS:
        # The verifier may still have scored what the agent left; a timeout without a score is 0.
        return Classification(
            JobStatus.FAILED,
            OutcomeKind.AGENT_TIMEOUT,
            reward if reward is not None else 0.0,
            False,
        )
    if exception_type in VERIFIER_ERRORS:
        return Classification(JobStatus.FAILED, OutcomeKind.VERIFIER_ERROR, reward, False)
    if exception_type in AGENT_FAILURE_ERRORS:
        return Classification(
            JobStatus.FAILED,
            OutcomeKind.AGENT_FAILURE,
            reward if reward is not None else 0.0,
            False,
        )
    if exception_type == "CancelledError":
        return Classification(JobStatus.CANCELLED, OutcomeKind.CANCELLED, reward, False)
    return Classification(JobStatus.FAILED, OutcomeKind.INFRASTRUCTURE_ERROR, reward, True)


def trial_result(status: str, outcome: str | None, reward: float | None) -> TrialResult | None:
    """What a trial amounted to (None until it finished). ``oddish.db.stats.trial_result_sql``
    is the same rule in SQL, for aggregates."""
    if status not in TERMINAL_JOB_STATUSES:
        return None
    if status == JobStatus.CANCELLED or outcome == OutcomeKind.CANCELLED:
        return TrialResult.CANCELLED
    if outcome in ERROR_OUTCOMES or (status == JobStatus.FAILED and reward is None):
        return TrialResult.ERROR
    if reward is None:
        return TrialResult.UNSCORED
    if math.isnan(reward) or reward <= 0.0:
        return TrialResult.FAILED
    return TrialResult.PASSED if reward >= PASS_REWARD else TrialResult.PARTIAL
