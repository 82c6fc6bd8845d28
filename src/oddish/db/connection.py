"""The async engine and sessions for the configured database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from oddish.config import get_settings

log = logging.getLogger(__name__)

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
    """The libpq/asyncpg form of a URL (no SQLAlchemy driver suffix), for raw asyncpg
    connections."""
    return (
        make_url(asyncpg_url(url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
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
        # No ping before each use (pool_pre_ping): asyncpg's is three round trips (begin, a
        # query, rollback), a tenth of a busy worker's main process. A connection Postgres
        # closed (a restart) is known closed to asyncpg without asking: replaced at checkout.
        _engine = create_async_engine(database_url(), pool_size=10)
        event.listen(_engine.sync_engine.pool, "checkout", _replace_closed_connection)
        _sessionmaker = async_sessionmaker(_engine, expire_on_commit=False)
    return _engine


def _replace_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    # DisconnectionError at checkout makes the pool drop this connection and hand out another.
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the pooled connection was closed by the server")


@asynccontextmanager
async def get_session() -> AsyncIterator[AsyncSession]:
    get_engine()
    assert _sessionmaker is not None
    async with _sessionmaker() as session:
        yield session


@asynccontextmanager
async def autocommit_connection() -> AsyncIterator[AsyncConnection]:
    """A connection whose every statement commits on its own: a statement that is the whole
    transaction then costs one round trip, not three (begin, the statement, commit)."""
    async with get_engine().connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


async def dispose_engine() -> None:
    global _engine, _sessionmaker
    if _engine is not None:
        await _engine.dispose()
    _engine = None
    _sessionmaker = None


# The server is down, restarting or dropped the connection: nothing is wrong with the statement.
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the database cannot be reached right now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _UNREACHABLE):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_unstorable_value(exc: DBAPIError) -> bool:
    """Whether Postgres refused a value itself (SQLSTATE class 22: too long, out of range, a NUL
    character), as opposed to the database failing."""
    return str(getattr(exc.orig, "sqlstate", "") or "").startswith("22")


async def until_database_answers[T](
    step: Callable[[], Awaitable[T]], *, what: str, max_delay_sec: float = 5.0
) -> T:
    """Run ``step`` (one transaction), again and again while the database cannot be reached.

    For work whose result must not be lost to a Postgres restart: a trial that ran for hours
    waits for the database rather than failing. Any other error is raised at once.
    """
    delay = 0.2
    while True:
        try:
            return await step()
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            log.warning(
                "%s: database unreachable (%s: %s); retrying in %.1fs",
                what,
                type(exc).__name__,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_sec)
