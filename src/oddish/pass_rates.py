"""Pass rates of an agent/model over tasks: pass@1 with its 95% interval, pass@k, mean reward
and errors by kind, from per-task counts (no I/O: the callers count, in SQL or over rows).

- pass@1 is the share of scored trials that passed, every scored trial counting once, with the
  Wilson score interval at 95% (it stays inside [0, 1] and is sound for small counts and rates
  near 0 or 1, unlike the normal approximation). It treats trials as independent draws, which
  trials of one task are not quite: read it as the uncertainty of the sample, not of the task
  set.
- pass@k for k = 1..n is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language
  Models Trained on Code"): per task with n scored trials of which c passed,
  1 - C(n-c, k) / C(n, k), the chance that k trials drawn without replacement include a pass;
  averaged over the tasks with at least k scored trials (the others are left out for that k).
  pass@k at k = 1 weighs every task alike, so it equals pass@1 when every task has as many
  scored trials.
- The mean reward is over scored trials too. Errors (infrastructure, verifier) and cancelled
  trials got no reward the agent earned: they are counted by kind, never as a reward of 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from oddish.statuses import ERROR_RESULTS, SCORED_RESULTS, TrialResult

CONFIDENCE = 0.95
# The two-sided normal quantile of CONFIDENCE (1.95996...).
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
# The key of trials not finished yet among the counts by result.
UNFINISHED = "unfinished"
RESULT_KEYS = [*(r.value for r in TrialResult), UNFINISHED]
# The error kinds always shown (with 0), others as they occur.
ERROR_KINDS = ["infrastructure_error", "verifier_error", "cancelled"]


@dataclass(frozen=True)
class TaskCell:
    """The trials of one task by one agent/model (or any set of trials taken as one problem).

    ``results`` counts trials by ``TrialResult`` value (and ``unfinished``); ``reward_sum`` sums
    the rewards of the scored ones; ``errors`` counts the trials whose result is an error or
    cancelled, by what went wrong (their outcome kind)."""

    results: Mapping[str, int]
    reward_sum: float = 0.0
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def scored(self) -> int:
        return sum(self.results.get(r, 0) for r in SCORED_RESULTS)

    @property
    def passed(self) -> int:
        return self.results.get(TrialResult.PASSED, 0)


def wilson_interval(passed: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``passed`` in ``n`` (n > 0)."""
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k_of_task(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of the n trials, c of which passed, hold a
    pass (exact rationals; for one value, tests and readers; ``pass_at_k`` computes all)."""
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, not {k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _pass_at_k_curve(n: int, c: int) -> list[float]:
    """pass@k of one task for k = 1..n. C(n-c, k) / C(n, k) is the product over i < k of
    (n-c-i) / (n-i): each step one factor, no large integers, no loss of precision."""
    curve = []
    ratio = 1.0
    for k in range(1, n + 1):
        ratio *= max(n - c - (k - 1), 0) / (n - (k - 1))
        curve.append(1.0 - ratio)
    return curve


def pass_at_k(cells: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    """pass@k for k = 1..the most scored trials of a task, from each task's (n scored, c
    passed): ``[{"k", "estimate", "tasks"}]``, ``tasks`` the tasks it averages."""
    return pass_at_k_of_shapes(Counter(cells))


def pass_at_k_of_shapes(shapes: Mapping[tuple[int, int], int]) -> list[dict[str, Any]]:
    """``pass_at_k`` of tasks counted by their (n scored, c passed): Postgres counts them so,
    and tasks of one shape share a curve, computed once and weighed by how many there are."""
    shapes = {(n, c): count for (n, c), count in shapes.items() if n > 0 and count}
    if not shapes:
        return []
    top = max(n for n, _ in shapes)
    sums = [0.0] * top
    tasks = [0] * top
    for (n, c), count in shapes.items():
        for k, value in enumerate(_pass_at_k_curve(n, c)):
            sums[k] += value * count
            tasks[k] += count
    return [
        {"k": k + 1, "estimate": sums[k] / tasks[k], "tasks": tasks[k]}
        for k in range(top)
        if tasks[k]
    ]


@dataclass(frozen=True)
class CellTotals:
    """Task cells summed: trials by result (``unfinished`` too), the reward sum of the scored
    ones, errors by kind, how many cells (tasks) there were, and how many of them had each
    (n scored, c passed), which is all pass@k needs of them."""

    results: Mapping[str, int]
    reward_sum: float
    errors: Mapping[str, int]
    tasks: int
    shapes: Mapping[tuple[int, int], int]


def summarize(cells: Iterable[TaskCell], *, with_pass_at_k: bool = True) -> dict[str, Any]:
    """The figures of a set of tasks' trials (the ``scores`` of the API's views):

    ``{"tasks", "trials", "results": {result: n, ..., "unfinished": n}, "scored", "passed",
    "errored", "mean_reward", "pass_at_1": {"estimate", "low", "high", "confidence",
    "interval"} | None, "pass_at_k": [{"k", "estimate", "tasks"}], "errors": {kind: n}}``.
    ``errored`` counts the trials that ended in an error or were cancelled. Without
    ``with_pass_at_k`` there is no ``pass_at_k`` (lists of many tasks leave it out: it holds as
    many values as a task has trials)."""
    cells = list(cells)
    results: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    reward_sum = 0.0
    for cell in cells:
        results.update(cell.results)
        errors.update(cell.errors)
        reward_sum += cell.reward_sum
    shapes = Counter((c.scored, c.passed) for c in cells) if with_pass_at_k else None
    return summarize_totals(
        CellTotals(results, reward_sum, errors, len(cells), shapes or {}),
        with_pass_at_k=with_pass_at_k,
    )


def summarize_totals(totals: CellTotals, *, with_pass_at_k: bool = True) -> dict[str, Any]:
    """``summarize`` of cells already summed (by Postgres, for a whole experiment)."""
    results = dict.fromkeys(RESULT_KEYS, 0)
    for key, n in totals.results.items():
        results[key] = results.get(key, 0) + n
    errors = dict.fromkeys(ERROR_KINDS, 0)
    for kind, n in totals.errors.items():
        errors[kind] = errors.get(kind, 0) + n
    scored = sum(results[r] for r in SCORED_RESULTS)
    passed = results[TrialResult.PASSED.value]
    pass_at_1 = None
    if scored:
        low, high = wilson_interval(passed, scored)
        pass_at_1 = {
            "estimate": passed / scored,
            "low": low,
            "high": high,
            "confidence": CONFIDENCE,
            "interval": "wilson",
        }
    summary = {
        "tasks": totals.tasks,
        "trials": sum(results.values()),
        "results": results,
        "scored": scored,
        "passed": passed,
        "errored": sum(results[r] for r in ERROR_RESULTS),
        "mean_reward": totals.reward_sum / scored if scored else None,
        "pass_at_1": pass_at_1,
        "pass_at_k": pass_at_k_of_shapes(totals.shapes) if with_pass_at_k else [],
        "errors": errors,
    }
    if not with_pass_at_k:
        del summary["pass_at_k"]
    return summary
