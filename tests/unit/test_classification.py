"""What Harbor reported becomes a recorded task outcome or a retried infrastructure failure."""

from __future__ import annotations

import pytest

from oddish.outcomes import TASK_OUTCOME_ERRORS, classify, main_reward
from oddish.statuses import JobStatus, OutcomeKind


@pytest.mark.parametrize(
    ("rewards", "expected"),
    [
        (None, None),
        ({}, None),
        ({"reward": 0.25, "style": 1.0}, 0.25),
        ({"accuracy": 0.5}, 0.5),
        ({"a": 1.0, "b": 0.0}, 0.5),
    ],
)
def test_main_reward_is_reward_else_the_only_value_else_the_mean(
    rewards: dict[str, float] | None, expected: float | None
) -> None:
    assert main_reward(rewards) == expected


@pytest.mark.parametrize(
    ("error", "rewards", "status", "outcome", "reward", "retryable"),
    [
        (None, {"reward": 1.0}, JobStatus.SUCCESS, OutcomeKind.SUCCESS, 1.0, False),
        (None, {"reward": 0.5}, JobStatus.SUCCESS, OutcomeKind.PARTIAL, 0.5, False),
        # A reward of 0 is a verified result, not a failure of the system.
        (None, {"reward": 0.0}, JobStatus.SUCCESS, OutcomeKind.TASK_FAILURE, 0.0, False),
        (None, None, JobStatus.SUCCESS, OutcomeKind.SUCCESS, None, False),
        ("AgentTimeoutError", None, JobStatus.FAILED, OutcomeKind.AGENT_TIMEOUT, 0.0, False),
        (
            "AgentTimeoutError",
            {"reward": 0.5},
            JobStatus.FAILED,
            OutcomeKind.AGENT_TIMEOUT,
            0.5,
            False,
        ),
        (
            "RewardFileNotFoundError",
            None,
            JobStatus.FAILED,
            OutcomeKind.VERIFIER_ERROR,
            None,
            False,
        ),
        (
            "NonZeroAgentExitCodeError",
            None,
            JobStatus.FAILED,
            OutcomeKind.AGENT_FAILURE,
            0.0,
            False,
        ),
        ("CancelledError", None, JobStatus.CANCELLED, OutcomeKind.CANCELLED, None, False),
        ("DaytonaError", None, JobStatus.FAILED, OutcomeKind.INFRASTRUCTURE_ERROR, None, True),
        ("RuntimeError", None, JobStatus.FAILED, OutcomeKind.INFRASTRUCTURE_ERROR, None, True),
    ],
)
def test_classification(
    error: str | None,
    rewards: dict[str, float] | None,
    status: JobStatus,
    outcome: OutcomeKind,
    reward: float | None,
    retryable: bool,
) -> None:
    verdict = classify(error, rewards)
    assert (verdict.status, verdict.outcome, verdict.reward, verdict.retryable) == (
        status,
        outcome,
        reward,
        retryable,
    )


def test_no_task_outcome_is_retried() -> None:
    """Retrying a task outcome would run the agent again and bill its model again for nothing."""
    assert not any(classify(error, None).retryable for error in TASK_OUTCOME_ERRORS)
