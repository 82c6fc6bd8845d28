"""Bad input against the real stack: the database CLI, and a submission key sent twice at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from sqlalchemy import func, select

from helpers import EXAMPLES, wait_for_task
from oddish.db.connection import get_session
from oddish.db.models import TaskModel
from oddish.queue import create_task
from oddish.schemas import AgentRunConfig, TaskSubmission


async def test_db_cli_setup_is_idempotent_and_reports_missing_url(
    oddish_env: dict, migrated: None
) -> None:
    env = {**os.environ, **oddish_env}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "oddish.db", "setup"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    bare = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "ODDISH_DATABASE_URL")}
    missing = subprocess.run(
        [sys.executable, "-m", "oddish.db", "init"],
        env=bare,
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert missing.returncode == 2
    assert "DATABASE_URL" in missing.stderr


async def test_same_submission_key_twice_at_once_makes_one_task(
    start_worker, temporal_client
) -> None:
    start_worker()
    submission = TaskSubmission(
        task_path=EXAMPLES / "hello-pass",
        configs=[AgentRunConfig(environment="local", n_trials=2)],
        submission_key="client-retry-42",
    )
    first, second = await asyncio.gather(
        create_task(submission, client=temporal_client),
        create_task(submission, client=temporal_client),
    )
    assert first == second
    task = await wait_for_task(temporal_client, first)
    assert len(task["trials"]) == 2
    async with get_session() as session:
        count = await session.execute(
            select(func.count())
            .select_from(TaskModel)
            .where(TaskModel.submission_key == "client-retry-42")
        )
        assert count.scalar_one() == 1
