"""Upgrading a database that already holds tasks: the data stays and new columns are filled in."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from alembic import command
from sqlalchemy.engine import make_url

from oddish.db.connection import plain_dsn
from oddish.db.migrations import alembic_config


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
