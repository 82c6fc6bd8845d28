"""The async engine and sessions for the configured database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from oddish.config import get_settings

_engine: AsyncEngine | None = None
_sessionmaker: async_sessionmaker[AsyncSession] | None = None


class DatabaseNotConfigured(RuntimeError):
    pass


def asyncpg_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg:// URLs; return the asyncpg form."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a Postgres URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def plain_dsn(url: str) -> str:
    """The libpq/asyncpg form of a URL (no SQLAlchemy driver suffix), for raw asyncpg connections."""
    return make_url(asyncpg_url(url)).set(drivername="postgresql").render_as_string(
        hide_password=False
    )


def database_url() -> str:
    url = get_settings().database_url
    if not url:
        raise DatabaseNotConfigured(
            "no database configured: set DATABASE_URL or ODDISH_DATABASE_URL "
            "(e.g. postgresql+asyncpg://user:pass@localhost:5432/oddish)"
        )
    return asyncpg_url(url)


def get_engine() -> AsyncEngine:
    global _engine, _sessionmaker
    if _engine is None:
        _engine = create_async_engine(database_url(), pool_pre_ping=True, pool_size=10)
        _sessionmaker = async_sessionmaker(_engine, expire_on_commit=False)
    return _engine


@asynccontextmanager
async def get_session() -> AsyncIterator[AsyncSession]:
    get_engine()
    assert _sessionmaker is not None
    async with _sessionmaker() as session:
        yield session


async def dispose_engine() -> None:
    global _engine, _sessionmaker
    if _engine is not None:
        await _engine.dispose()
    _engine = None
    _sessionmaker = None
