"""Alembic environment: async (asyncpg), version table ``alembic_version_oddish``."""

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from oddish.db.connection import database_url
from oddish.db.models import Base

VERSION_TABLE = "alembic_version_oddish"
target_metadata = Base.metadata


def _url() -> str:
    return context.config.attributes.get("database_url") or database_url()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, version_table=VERSION_TABLE, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, version_table=VERSION_TABLE
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            # Workers starting together each upgrade; the lock makes them take turns.
            await connection.execute(text("SELECT pg_advisory_lock(hashtext('oddish-migrations'))"))
            await connection.commit()
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
