"""An attempt's result recorded while ``fail_trial`` looks at its trial (Temporal gave up on the
attempt, which carried on) stands: the trial is not failed over it. Rows are written directly
and the activity runs in temporalio's ActivityEnvironment: only Postgres is needed."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from temporalio.testing import ActivityEnvironment

from helpers import open_test_attempt, running_task_row
from oddish.activities.records import fail_trial
from oddish.contracts import FailTrialInput
from oddish.db import records
from oddish.db.connection import get_session
from oddish.db.models import ExperimentModel, TrialModel
from oddish.statuses import AttemptStatus, JobStatus, OutcomeKind

pytestmark = pytest.mark.timeout(120)


async def _running_trial() -> tuple[str, int]:
    """A trial of a new task with one attempt running; its id and the attempt's."""
    name = f"races-{os.getpid()}-{time.monotonic_ns()}"
    task_id, trial_id = f"{name}-task", f"{name}-trial"
    async with get_session() as session:
        session.add(ExperimentModel(id=name, name=name))
        await session.flush()
        session.add(running_task_row(task_id, name, "race"))
        await session.flush()
        session.add(
            TrialModel(
                id=trial_id,
                task_id=task_id,
                index=0,
                agent="oracle",
                queue_key="default",
                environment="local",
                spec={},
                status="running",
                run_number=1,
            )
        )
        await session.commit()
    return trial_id, await open_test_attempt(trial_id)


async def _finish_uncommitted(session: AsyncSession, trial_id: str, attempt_id: int) -> None:
    """The attempt's successful finish, written but not yet committed: it holds the trial's row."""
    await records.finish_trial(
        session,
        trial_id=trial_id,
        attempt_id=attempt_id,
        attempt_status=AttemptStatus.SUCCESS,
        fields=records.TrialResultFields(
            status=JobStatus.SUCCESS, outcome=OutcomeKind.SUCCESS, reward=1.0
        ),
    )


async def test_fail_trial_takes_the_result_an_attempt_records_meanwhile(migrated: None) -> None:
    trial_id, attempt_id = await _running_trial()
    async with get_session() as finishing:
        await _finish_uncommitted(finishing, trial_id, attempt_id)
        failing = asyncio.ensure_future(
            ActivityEnvironment().run(
                fail_trial,
                FailTrialInput(trial_id, 1, "TimeoutError", "activity Heartbeat timeout"),
            )
        )
        await asyncio.sleep(1.0)
        assert not failing.done(), "fail_trial decided before the attempt's finish was committed"
        await finishing.commit()
    outcome = await asyncio.wait_for(failing, timeout=30)

    assert (outcome.status, outcome.reward) == (JobStatus.SUCCESS, 1.0)
    async with get_session() as session:
        trial = await records.get_trial(session, trial_id)
        assert (trial.status, trial.reward) == (JobStatus.SUCCESS, 1.0)
        assert [a.status for a in trial.attempts] == [AttemptStatus.SUCCESS]


async def _open(trial_id: str, conn: AsyncConnection | None = None) -> object:
    """Open a later attempt of the trial's first run, on ``conn`` (default: in autocommit)."""
    from oddish.db import attempts
    from oddish.db.connection import autocommit_connection

    if conn is None:
        async with autocommit_connection() as own:
            return await _open(trial_id, own)
    return await attempts.open_attempt(
        conn,
        trial_id=trial_id,
        run_number=1,
        temporal_attempt=2,
        worker="later",
        alive_within_sec=30.0,
    )


async def test_an_attempt_opening_while_the_run_finishes_takes_its_result(
    migrated: None,
) -> None:
    """Temporal runs the trial again while its first attempt records its result: the opening
    waits for that result and returns it; no second attempt is opened."""
    from oddish.db import attempts

    trial_id, attempt_id = await _running_trial()
    async with get_session() as finishing:
        await _finish_uncommitted(finishing, trial_id, attempt_id)
        opening = asyncio.ensure_future(_open(trial_id))
        await asyncio.sleep(1.0)
        assert not opening.done(), "the attempt opened before the finish was committed"
        await finishing.commit()
    opened = await asyncio.wait_for(opening, timeout=30)

    assert isinstance(opened, attempts.RunFinished)
    assert (opened.status, opened.reward) == (JobStatus.SUCCESS, 1.0)
    async with get_session() as session:
        trial = await records.get_trial(session, trial_id)
        assert [a.status for a in trial.attempts] == [AttemptStatus.SUCCESS]


async def test_two_attempts_opening_at_once_get_numbers_of_their_own(migrated: None) -> None:
    """An attempt opened (and committed) while another opening waited for the trial's lock is
    seen by it: the later one takes the next number and marks the silent one lost, rather than
    failing on the number both would have taken."""
    from sqlalchemy import text

    from oddish.db import attempts
    from oddish.db.connection import get_engine

    trial_id, first_id = await _running_trial()
    async with get_engine().connect() as holding:
        # The first attempt is marked lost by a second opening, which holds the trial's lock
        # until it commits; a third opening waits for it meanwhile.
        second = await _open(trial_id, holding)
        assert isinstance(second, attempts.OpenedAttempt) and second.number == 2
        third_opening = asyncio.ensure_future(_open(trial_id))
        await asyncio.sleep(1.0)
        assert not third_opening.done(), "the opening did not wait for the trial's lock"
        await holding.commit()
    third = await asyncio.wait_for(third_opening, timeout=30)

    assert isinstance(third, attempts.OpenedAttempt) and third.number == 3
    async with get_engine().connect() as conn:
        rows = await conn.execute(
            text("SELECT number, status FROM trial_attempts WHERE trial_id = :t ORDER BY number"),
            {"t": trial_id},
        )
        assert [tuple(r) for r in rows] == [
            (1, AttemptStatus.LOST),
            (2, AttemptStatus.LOST),
            (3, AttemptStatus.RUNNING),
        ]
    assert first_id != second.attempt_id != third.attempt_id
