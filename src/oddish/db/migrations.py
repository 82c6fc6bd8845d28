"""Schema management: Alembic migrations (version table ``alembic_version_oddish``), reset and
purge."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from oddish.db.connection import database_url, get_engine
from oddish.db.models import Base
from oddish.db.pgqueuer_schema import UNINSTALL_SQL

# What migration 0007 defines beside its table.
ROLLUP_FUNCTIONS = (
    "oddish_trial_rollups_insert()",
    "oddish_trial_rollups_update()",
    "oddish_trial_rollups_delete()",
    "oddish_trial_result(text, text, float8)",
)


def _script_location() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_alembic"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "alembic"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["database_url"] = url or database_url()
    return config


async def upgrade(url: str | None = None) -> None:
    # Alembic's env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, alembic_config(url), "head")


async def drop_all() -> None:
    async with get_engine().begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.execute(text("DROP TABLE IF EXISTS alembic_version_oddish"))
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is not None, "an asyncpg connection"
        await raw.driver_connection.execute(UNINSTALL_SQL)
        # The trial_rollups triggers went with the tables; their functions stay otherwise.
        for function in ROLLUP_FUNCTIONS:
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {function} CASCADE"))


async def purge() -> None:
    """Delete every row, keeping the schema."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    tables += ["pgqueuer", "pgqueuer_log", "pgqueuer_statistics"]
    async with get_engine().begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
