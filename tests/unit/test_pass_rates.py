"""The pass-rate math against values worked out by hand and by exact rationals."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from oddish.outcomes import trial_result
from oddish.pass_rates import (
    TaskCell,
    pass_at_k,
    pass_at_k_of_task,
    summarize,
    wilson_interval,
)
from oddish.statuses import TrialResult


@pytest.mark.parametrize(
    ("passed", "n", "low", "high"),
    [
        # Wilson's interval at z = 1.96 (published tables, e.g. Newcombe 1998, and by hand).
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_matches_known_values(passed: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(passed, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_pass_at_k_of_one_task_is_chen_et_al() -> None:
    # n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@3 = 1 - 1/10; pass@4 = 1.
    assert pass_at_k_of_task(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k_of_task(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k_of_task(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k_of_task(5, 2, 4) == 1.0
    assert pass_at_k_of_task(3, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k_of_task(3, 1, 4)


def test_pass_at_k_curve_equals_the_exact_rationals() -> None:
    for n, c in [(1, 0), (1, 1), (7, 3), (20, 1), (50, 49), (200, 17)]:
        (curve,) = [pass_at_k([(n, c)])]
        assert [p["k"] for p in curve] == list(range(1, n + 1))
        for point in curve:
            k = point["k"]
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert point["estimate"] == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_averages_tasks_and_leaves_out_those_with_fewer_trials() -> None:
    # Task A: 3 trials, 1 passed. Task B: 1 trial, passed. Task C: 3 trials, none passed.
    curve = pass_at_k([(3, 1), (1, 1), (3, 0)])
    assert curve == [
        {"k": 1, "estimate": pytest.approx((1 / 3 + 1 + 0) / 3), "tasks": 3},
        # B has one trial: out for k >= 2. A: 1 - C(2,2)/C(3,2) = 2/3.
        {"k": 2, "estimate": pytest.approx((2 / 3 + 0) / 2), "tasks": 2},
        {"k": 3, "estimate": pytest.approx((1 + 0) / 2), "tasks": 2},
    ]
    assert pass_at_k([]) == [] and pass_at_k([(0, 0)]) == []


def test_summary_counts_errors_apart_from_scores() -> None:
    cells = [
        TaskCell(
            {"passed": 2, "failed": 1, "error": 1},
            reward_sum=2.0,
            errors={"infrastructure_error": 1},
        ),
        TaskCell({"partial": 2, "cancelled": 1, "unfinished": 1}, 1.0, {"cancelled": 1}),
    ]
    s = summarize(cells)
    assert s["tasks"] == 2 and s["trials"] == 8 and s["scored"] == 5 and s["passed"] == 2
    assert s["results"] == {
        "passed": 2,
        "partial": 2,
        "failed": 1,
        "error": 1,
        "cancelled": 1,
        "unscored": 0,
        "unfinished": 1,
    }
    assert s["errored"] == 2
    assert s["errors"] == {"infrastructure_error": 1, "verifier_error": 0, "cancelled": 1}
    # The mean of the scored trials' rewards: errors are not zeros.
    assert s["mean_reward"] == pytest.approx(3.0 / 5)
    low, high = wilson_interval(2, 5)
    assert s["pass_at_1"] == {
        "estimate": pytest.approx(0.4),
        "low": pytest.approx(low),
        "high": pytest.approx(high),
        "confidence": 0.95,
        "interval": "wilson",
    }
    assert s["pass_at_k"][0] == {"k": 1, "estimate": pytest.approx((2 / 3 + 0) / 2), "tasks": 2}


def test_summary_of_nothing_scored() -> None:
    s = summarize([TaskCell({"error": 2}, errors={"verifier_error": 2})])
    assert s["scored"] == 0 and s["mean_reward"] is None and s["pass_at_1"] is None
    assert s["pass_at_k"] == [] and s["errored"] == 2
    assert summarize([])["trials"] == 0


@pytest.mark.parametrize(
    ("status", "outcome", "reward", "expected"),
    [
        ("running", None, None, None),
        ("queued", None, None, None),
        ("success", "success", 1.0, TrialResult.PASSED),
        ("success", "partial", 0.5, TrialResult.PARTIAL),
        # The bug this exists for: a verified 0 is a failure, whatever the status says.
        ("success", "task_failure", 0.0, TrialResult.FAILED),
        ("success", "task_failure", float("nan"), TrialResult.FAILED),
        ("success", "success", None, TrialResult.UNSCORED),
        ("failed", "agent_timeout", 0.0, TrialResult.FAILED),
        ("failed", "agent_timeout", 1.0, TrialResult.PASSED),
        ("failed", "agent_failure", 0.0, TrialResult.FAILED),
        ("failed", "verifier_error", None, TrialResult.ERROR),
        ("failed", "verifier_error", 0.0, TrialResult.ERROR),
        ("failed", "infrastructure_error", None, TrialResult.ERROR),
        ("failed", None, None, TrialResult.ERROR),
        ("cancelled", "cancelled", None, TrialResult.CANCELLED),
        ("cancelled", None, None, TrialResult.CANCELLED),
    ],
)
def test_trial_result(
    status: str, outcome: str | None, reward: float | None, expected: TrialResult | None
) -> None:
    assert trial_result(status, outcome, reward) == expected
