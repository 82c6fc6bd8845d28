"""An attempt's result recorded while ``fail_trial`` looks at its trial (Temporal gave up on the
attempt, which carried on) stands: the trial is not failed over it. Rows are written directly
and the activity runs in temporalio's ActivityEnvironment: only Postgres is needed."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
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


async def test_fail_trial_takes_the_result_an_attempt_records_meanwhile(migrated: None) -> None:
    trial_id, attempt_id = await _running_trial()
    success = records.TrialResultFields(
        status=JobStatus.SUCCESS, outcome=OutcomeKind.SUCCESS, reward=1.0
    )
    async with get_session() as finishing:
        # The attempt's finish, written but not yet committed, holds its trial's row.
        await records.finish_trial(
            finishing,
            trial_id=trial_id,
            attempt_id=attempt_id,
            attempt_status=AttemptStatus.SUCCESS,
            fields=success,
        )
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
