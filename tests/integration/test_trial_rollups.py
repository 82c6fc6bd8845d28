"""``trial_rollups`` stays equal to what the trial rows say through every kind of write: rows
inserted, updated one by one or by one statement, NaN rewards that come and go, trials reset for
a retry, trials and tasks deleted, and many writers at once. Postgres's ``oddish_trial_result``
gives what ``oddish.outcomes.trial_result`` gives. The rows are written directly (no workflow
runs): only Postgres is needed."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from helpers import running_task_row
from oddish.db.connection import get_session
from oddish.db.models import ExperimentModel, TaskModel, TrialModel, trial_rollups
from oddish.outcomes import PASS_REWARD, trial_result
from oddish.statuses import TERMINAL_JOB_STATUSES, JobStatus, OutcomeKind

pytestmark = pytest.mark.timeout(300)

STATUSES = [s.value for s in JobStatus]
OUTCOMES = [None, *(o.value for o in OutcomeKind)]
REWARDS = [None, math.nan, -1.0, 0.0, 0.25, 0.999, 1.0, 1.5]
STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
AGENTS = [("oracle", None), ("claude-code", "anthropic/claude-sonnet-4-5"), ("nop", "")]

Key = tuple[str, str, str | None, str, str | None, str | None]
KEY = ("task_id", "agent", "model", "status", "outcome", "result")
# What each rollup row sums: every column but its experiment and its key.
SUMS = [c.name for c in trial_rollups.columns if c.name not in {"experiment_id", *KEY}]


def _expected(trials: list[TrialModel]) -> dict[Key, dict[str, Any]]:
    """The rollup rows the trial rows call for, summed in Python."""
    rows: dict[Key, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(SUMS, 0))
    for t in trials:
        result = trial_result(t.status, t.outcome, t.reward)
        row = rows[t.task_id, t.agent, t.model, t.status, t.outcome, result]
        row["trials"] += 1
        nan = t.reward is not None and math.isnan(t.reward)
        row["passed"] += t.reward is not None and not nan and t.reward >= PASS_REWARD
        row["nan_rewards"] += nan
        row["score_sum"] += 0.0 if t.reward is None or nan else t.reward
        for tokens in ("n_input_tokens", "n_cache_tokens", "n_output_tokens"):
            row[tokens] += getattr(t, tokens) or 0
        if t.cost_usd is not None:
            row["cost_usd"] += t.cost_usd
            row["cost_trials"] += 1
        if t.started_at is not None and t.finished_at is not None:
            row["timed_trials"] += 1
            row["duration_sec"] += (t.finished_at - t.started_at).total_seconds()
    return dict(rows)


async def _assert_rollups_match(experiment_id: str) -> None:
    async with get_session() as session:
        trials = list(
            (
                await session.execute(
                    select(TrialModel)
                    .join(TaskModel, TaskModel.id == TrialModel.task_id)
                    .where(TaskModel.experiment_id == experiment_id)
                )
            )
            .scalars()
            .all()
        )
        stored = (
            (
                await session.execute(
                    select(trial_rollups).where(
                        trial_rollups.c.experiment_id == experiment_id,
                        trial_rollups.c.trials != 0,
                    )
                )
            )
            .mappings()
            .all()
        )
    got = {tuple(r[k] for k in KEY): {k: r[k] for k in SUMS} for r in stored}
    expected = _expected(trials)
    assert got.keys() == expected.keys()
    for key, sums in expected.items():
        assert got[key] == {k: pytest.approx(v, abs=1e-9) for k, v in sums.items()}, key


def _trial(task_id: str, t: int, i: int) -> TrialModel:
    agent, model = AGENTS[(t + i) % len(AGENTS)]
    finished = i % 3 != 0
    return TrialModel(
        id=f"{task_id}-trial-{i}",
        task_id=task_id,
        index=i,
        agent=agent,
        model=model,
        queue_key=model or "default",
        environment="local",
        spec={},
        status=["success", "failed", "running", "queued"][i % 4],
        reward=REWARDS[(t + i) % len(REWARDS)] if finished else None,
        outcome=OUTCOMES[(t * 2 + i) % len(OUTCOMES)] if finished else None,
        n_input_tokens=1000 + i if i % 2 else None,
        n_cache_tokens=10 * i,
        n_output_tokens=None if i % 5 == 0 else 7,
        cost_usd=0.01 * i if i % 3 == 1 else None,
        started_at=STARTED if i % 4 != 3 else None,
        finished_at=STARTED + timedelta(seconds=1.5 * i) if finished else None,
        run_number=1,
    )


async def _seed(experiment_id: str, n_tasks: int = 6, n_trials: int = 12) -> list[str]:
    task_ids = [f"{experiment_id}-task-{t}" for t in range(n_tasks)]
    async with get_session() as session:
        session.add(ExperimentModel(id=experiment_id, name=experiment_id))
        await session.flush()
        for t, task_id in enumerate(task_ids):
            session.add(running_task_row(task_id, experiment_id, f"task {t}"))
        await session.flush()
        # Trials of the first task one by one, the others' in one statement each.
        for trial in [_trial(task_ids[0], 0, i) for i in range(n_trials)]:
            session.add(trial)
            await session.flush()
        for t, task_id in enumerate(task_ids[1:], start=1):
            session.add_all([_trial(task_id, t, i) for i in range(n_trials)])
            await session.flush()
        await session.commit()
    return task_ids


def _new_experiment() -> str:
    return f"rollups-{os.getpid()}-{time.monotonic_ns()}"


async def test_rollups_follow_every_write(migrated: None) -> None:
    experiment_id = _new_experiment()
    task_ids = await _seed(experiment_id)
    await _assert_rollups_match(experiment_id)

    # One trial at a time, as a worker records them: it starts, then it finishes.
    async with get_session() as session:
        trial = await session.get(TrialModel, f"{task_ids[0]}-trial-3")
        assert trial is not None and trial.status == "queued"
        trial.status, trial.started_at = "running", STARTED
        await session.commit()
        trial.status, trial.reward, trial.outcome = "success", 1.0, "success"
        trial.n_input_tokens, trial.cost_usd = 12345, 0.5
        trial.finished_at = STARTED + timedelta(seconds=42)
        await session.commit()
    await _assert_rollups_match(experiment_id)

    # A NaN reward counts apart, and leaves no trace once the trial is scored again.
    nan_trial = f"{task_ids[1]}-trial-1"
    async with get_session() as session:
        await session.execute(
            update(TrialModel).where(TrialModel.id == nan_trial).values(reward=math.nan)
        )
        await session.commit()
    await _assert_rollups_match(experiment_id)
    async with get_session() as session:
        await session.execute(
            update(TrialModel).where(TrialModel.id == nan_trial).values(reward=0.5)
        )
        await session.commit()
    await _assert_rollups_match(experiment_id)

    # One statement over many rows: every unfinished trial of the experiment cancelled.
    async with get_session() as session:
        await session.execute(
            update(TrialModel)
            .where(
                TrialModel.task_id.in_(task_ids),
                TrialModel.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]),
            )
            .values(status="cancelled", outcome="cancelled", finished_at=STARTED)
        )
        await session.commit()
    await _assert_rollups_match(experiment_id)

    # A retry: the trials that did not pass go back to queued with nothing recorded.
    async with get_session() as session:
        await session.execute(
            update(TrialModel)
            .where(TrialModel.task_id == task_ids[2], TrialModel.status != "success")
            .values(
                status="queued",
                reward=None,
                outcome=None,
                n_input_tokens=None,
                cost_usd=None,
                started_at=None,
                finished_at=None,
            )
        )
        await session.commit()
    await _assert_rollups_match(experiment_id)

    # An update of columns the rollup does not count writes nothing to it.
    async with get_session() as session:
        before = (await session.execute(text("SELECT xmin::text FROM trial_rollups"))).all()
        await session.execute(
            update(TrialModel)
            .where(TrialModel.task_id == task_ids[3])
            .values(harbor_config={"x": 1}, error_message="seen")
        )
        await session.commit()
        after = (await session.execute(text("SELECT xmin::text FROM trial_rollups"))).all()
    assert sorted(before) == sorted(after)

    # A trial deleted, a task deleted with its trials, trials added to a task.
    async with get_session() as session:
        await session.execute(delete(TrialModel).where(TrialModel.id == f"{task_ids[4]}-trial-0"))
        await session.execute(delete(TaskModel).where(TaskModel.id == task_ids[5]))
        session.add_all([_trial(task_ids[4], 9, i) for i in range(100, 110)])
        await session.commit()
    await _assert_rollups_match(experiment_id)
    async with get_session() as session:
        left = await session.execute(
            select(trial_rollups.c.task_id).where(trial_rollups.c.task_id == task_ids[5])
        )
        assert left.all() == [], "a deleted task's rollup rows go with it"


async def test_rollups_stay_exact_under_concurrent_writers(migrated: None) -> None:
    """Trials of one task finish at once, each in its own transaction, as workers record them:
    every count lands (no update is lost, no deadlock)."""
    experiment_id = _new_experiment()
    task_ids = await _seed(experiment_id, n_tasks=2, n_trials=40)

    async def finish(trial_id: str, n: int) -> None:
        async with get_session() as session:
            await session.execute(
                update(TrialModel)
                .where(TrialModel.id == trial_id)
                .values(
                    status="success",
                    reward=[0.0, 1.0, 0.5][n % 3],
                    outcome="success",
                    n_input_tokens=n,
                    cost_usd=0.001 * n,
                    started_at=STARTED,
                    finished_at=STARTED + timedelta(seconds=n),
                )
            )
            await session.commit()

    await asyncio.gather(
        *(finish(f"{task_id}-trial-{i}", i) for task_id in task_ids for i in range(40))
    )
    await _assert_rollups_match(experiment_id)


@pytest.mark.parametrize("status", STATUSES)
async def test_sql_trial_result_is_the_python_one(migrated: None, status: str) -> None:
    async with get_session() as session:
        for outcome in OUTCOMES:
            for reward in REWARDS:
                got = (
                    await session.execute(
                        text("SELECT oddish_trial_result(:status, :outcome, :reward)"),
                        {"status": status, "outcome": outcome, "reward": reward},
                    )
                ).scalar_one()
                expected = trial_result(status, outcome, reward)
                assert got == (None if expected is None else expected.value), (
                    status,
                    outcome,
                    reward,
                )
