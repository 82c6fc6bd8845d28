"""Upgrading a database that already holds tasks: the data stays and new columns are filled in;
a task recorded before task archives went to storage still runs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy.engine import make_url
from temporalio.client import Client

from helpers import EXAMPLES, local, wait_for_task
from oddish import task_control
from oddish.config import get_settings
from oddish.db import records
from oddish.db.connection import get_session, plain_dsn
from oddish.db.migrations import alembic_config
from oddish.db.models import ExperimentModel, TaskModel, TrialModel
from oddish.ids import new_id
from oddish.queue import trial_values, workflow_input
from oddish.schemas import AgentRunConfig, TaskSubmission
from oddish.task_store import copy_task_dir, is_legacy_location
from oddish.temporal_gateway import start_task_workflow
from oddish.workflows import workflow_id_for_task


@pytest.fixture
async def scratch_database(database_url: str) -> AsyncIterator[str]:
    """An empty database of its own on the test server, dropped afterwards."""
    name = f"oddish_migrate_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(plain_dsn(database_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrate(url: str, revision: str, *, down: bool = False) -> None:
    # Alembic's env.py runs an event loop of its own.
    step = command.downgrade if down else command.upgrade
    await asyncio.to_thread(step, alembic_config(url), revision)


async def test_upgrade_marks_the_tasks_that_have_workflows(scratch_database: str) -> None:
    await migrate(scratch_database, "0002")
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    conn = await asyncpg.connect(plain_dsn(scratch_database))
    try:
        await conn.execute("INSERT INTO experiments (id, name) VALUES ('exp-1', 'before')")
        for task_id, status, started_at in [
            ("task-pending", "pending", None),
            ("task-running", "running", started),
            ("task-cancelled", "cancelled", None),
        ]:
            await conn.execute(
                "INSERT INTO tasks (id, experiment_id, name, task_path, status, priority, "
                "run_analysis, workflow_id, started_at, created_at) "
                "VALUES ($1, 'exp-1', 't', '/t', $2, 0, true, $1, $3, $4)",
                task_id,
                status,
                started_at,
                started - timedelta(minutes=1),
            )

        await migrate(scratch_database, "head")
        rows = {
            r["id"]: r
            for r in await conn.fetch("SELECT id, status, workflow_started_at FROM tasks")
        }
        # A task a workflow has recorded has one; a pending one is left for the workers to ask.
        assert rows["task-pending"]["workflow_started_at"] is None
        assert rows["task-running"]["workflow_started_at"] == started
        assert rows["task-cancelled"]["workflow_started_at"] == started - timedelta(minutes=1)
        assert {r["status"] for r in rows.values()} == {"pending", "running", "cancelled"}

        # And back down, keeping the rows.
        await migrate(scratch_database, "0002", down=True)
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 3
    finally:
        await conn.close()


async def test_upgrade_keeps_local_task_paths_as_legacy_locations(scratch_database: str) -> None:
    """0004: tasks recorded before archives keep their absolute path, with no sha256."""
    await migrate(scratch_database, "0003")
    conn = await asyncpg.connect(plain_dsn(scratch_database))
    try:
        await conn.execute("INSERT INTO experiments (id, name) VALUES ('exp-1', 'before')")
        await conn.execute(
            "INSERT INTO tasks (id, experiment_id, name, task_path, status, priority, "
            "run_analysis, workflow_id) "
            "VALUES ('task-old', 'exp-1', 't', '/var/oddish/tasks/task-old', 'completed', 0, "
            "true, 'task/task-old')"
        )
        await migrate(scratch_database, "head")
        row = await conn.fetchrow("SELECT task_path, archive_sha256 FROM tasks")
        assert dict(row) == {"task_path": "/var/oddish/tasks/task-old", "archive_sha256": None}
        assert is_legacy_location(row["task_path"])

        await migrate(scratch_database, "0003", down=True)
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'"
        )
        assert "archive_sha256" not in {c["column_name"] for c in columns}
        assert await conn.fetchval("SELECT task_path FROM tasks") == "/var/oddish/tasks/task-old"
    finally:
        await conn.close()


async def record_legacy_task(client: Client, task: str, *configs: AgentRunConfig) -> str:
    """A task recorded as submissions were before archives: a copy under ODDISH_TASKS_DIR, its
    absolute path in ``task_path``, no sha256; then its workflow started."""
    submission = TaskSubmission(task_path=EXAMPLES / task, configs=list(configs))
    task_id = new_id("task")
    copy = get_settings().tasks_dir / task_id
    copy_task_dir(submission.task_path, copy)
    experiment_id = new_id("exp")
    async with get_session() as session:
        session.add(ExperimentModel(id=experiment_id, name="before archives"))
        row = TaskModel(
            id=task_id,
            experiment_id=experiment_id,
            name=task,
            task_path=str(copy),
            run_analysis=False,
            workflow_id=workflow_id_for_task(task_id),
        )
        trials = [TrialModel(**values) for values in trial_values(task_id, submission)]
        session.add(row)
        session.add_all(trials)
        await session.commit()
    await start_task_workflow(client, workflow_input(row, trials))
    return task_id


async def test_a_task_recorded_before_archives_still_runs(
    start_worker, temporal_client: Client, tmp_path: Path
) -> None:
    start_worker(ODDISH_TASK_CACHE_DIR=str(tmp_path / "task-cache"))
    task_id = await record_legacy_task(temporal_client, "hello-pass", local(n_trials=2))
    async with get_session() as session:
        row = await records.get_task(session, task_id)
    assert row.archive_sha256 is None and is_legacy_location(row.task_path)

    task = await wait_for_task(temporal_client, task_id)
    assert task["status"] == "completed"
    assert [t["reward"] for t in task["trials"]] == [1.0, 1.0]
    assert not (tmp_path / "task-cache").exists(), "read from its directory, not the cache"

    await task_control.delete_task(task_id, client=temporal_client)
    assert not Path(row.task_path).exists(), "its local copy goes with it"


async def test_upgrade_rolls_up_the_trials_recorded_before(scratch_database: str) -> None:
    """0007: trial_rollups starts from the trials already recorded, and follows them after."""
    await migrate(scratch_database, "0006")
    conn = await asyncpg.connect(plain_dsn(scratch_database))
    try:
        await conn.execute(
            "INSERT INTO experiments (id, name) VALUES ('exp-1', 'before');"
            "INSERT INTO tasks (id, experiment_id, name, task_path, status, priority, "
            "run_analysis, workflow_id) VALUES "
            "('task-1', 'exp-1', 't', 'tasks/task-1/x.tar.gz', 'running', 0, false, 't')"
        )
        for index, (status, reward) in enumerate(
            [("success", 1.0), ("success", 1.0), ("success", 0.0), ("queued", None)]
        ):
            await conn.execute(
                "INSERT INTO trials (id, task_id, index, agent, model, queue_key, environment, "
                "spec, status, reward, run_number, cost_usd) "
                "VALUES ($1, 'task-1', $2, 'oracle', NULL, 'default', 'local', '{}', $3, $4, 1, "
                "0.25)",
                f"trial-{index}",
                index,
                status,
                reward,
            )

        await migrate(scratch_database, "head")
        rollup = "SELECT result, trials, passed, score_sum, cost_usd FROM trial_rollups ORDER BY 1"
        assert [tuple(r) for r in await conn.fetch(rollup)] == [
            ("failed", 1, 0, 0.0, 0.25),
            ("passed", 2, 2, 2.0, 0.5),
            (None, 1, 0, 0.0, 0.25),
        ]
        await conn.execute("UPDATE trials SET status = 'success', reward = 1.0 WHERE index = 3")
        assert [tuple(r) for r in await conn.fetch(rollup)] == [
            ("failed", 1, 0, 0.0, 0.25),
            ("passed", 3, 3, 3.0, 0.75),
            (None, 0, 0, 0.0, 0.0),
        ]

        # Down and up again: the table, its triggers and functions go and come back.
        await migrate(scratch_database, "0006", down=True)
        assert await conn.fetchval("SELECT to_regclass('trial_rollups')") is None
        await conn.execute("UPDATE trials SET reward = 0.0")
        await migrate(scratch_database, "head")
        assert await conn.fetchval("SELECT sum(trials) FROM trial_rollups") == 4
        assert await conn.fetchval("SELECT sum(passed) FROM trial_rollups") == 0
    finally:
        await conn.close()
