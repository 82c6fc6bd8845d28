"""``oddish up``: the whole system in one process, on embedded defaults.

An embedded Postgres (unless DATABASE_URL / ODDISH_DATABASE_URL is set) and a Temporal dev server
with its Web UI (unless ODDISH_TEMPORAL_ADDRESS is set), both keeping their data under the home
directory, as do stored tasks and Harbor's output unless configured elsewhere; then the REST API
with a worker in the same process. Ctrl-C or SIGTERM stops all of it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import typer

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("oddish.up")

LOCK_FILE = "up.lock"
EXAMPLE_TASK = "examples/tasks/hello-pass"
# Where the CLI looks when ODDISH_API_URL is unset.
CLI_DEFAULT_API_URLS = ("http://localhost:8000", "http://127.0.0.1:8000")


class AlreadyRunning(RuntimeError):
    pass


class PortInUse(RuntimeError):
    pass


class StopRequested(Exception):
    """A signal arrived before the API was serving: start-up is abandoned, then cleaned up."""


class HomeLock:
    """An exclusive lock on the home directory, held while ``oddish up`` runs.

    ``flock`` goes away with its process however that process ends, so a crash never leaves a
    stale lock behind.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"oddish up is already running with home {self.path.parent} (pid {holder}); "
                "stop it first, or pass --home to start another"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SignalGate:
    """SIGINT/SIGTERM/SIGHUP handling across the three phases of a run.

    Starting: a signal aborts start-up (and everything started so far is stopped). Serving:
    uvicorn handles signals itself and, once shut down, re-raises what it caught; here that
    only asks the server to exit, which it already did. Stopping: signals are ignored, so that
    a second Ctrl-C cannot leave a Temporal server or a Postgres behind.
    """

    def __init__(self) -> None:
        self.phase = "starting"
        self.server: uvicorn.Server | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def install(self) -> None:
        # SIGHUP too: closing the terminal must not strand the servers either.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.phase == "starting":
            self.phase = "stopping"
            raise StopRequested
        if self.phase == "serving" and self.server is not None:
            self.server.should_exit = True
            return
        print("oddish: still stopping, one moment...", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Endpoints:
    api: str
    temporal_address: str
    temporal_ui: str | None
    # Where the records live, in words: an embedded data directory or the configured server.
    database: str


def display_host(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "::", "") else host


def bind_api_socket(host: str, port: int) -> socket.socket:
    """Bind the API's listening socket before anything starts, so a taken port fails fast."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"port {port} is already in use ({exc.strerror}); pass --port to use another"
        ) from None
    return sock


def require_free(port: int, flag: str) -> None:
    from oddish.embedded import port_free

    if not port_free("127.0.0.1", port):
        raise PortInUse(f"port {port} is already in use; pass {flag} to use another")


def banner(endpoints: Endpoints, started_sec: float) -> str:
    lines = [
        f"oddish is up in {started_sec:.1f}s",
        f"  API          {endpoints.api}",
        f"  Dashboard    {endpoints.api}/ui",
        f"  API docs     {endpoints.api}/docs",
    ]
    if endpoints.temporal_ui:
        lines.append(f"  Temporal UI  {endpoints.temporal_ui}")
    else:
        lines.append(f"  Temporal     {endpoints.temporal_address} (ODDISH_TEMPORAL_ADDRESS)")
    lines += [f"  Postgres     {endpoints.database}", "", "Run a task, in another shell:"]
    if endpoints.api not in CLI_DEFAULT_API_URLS:
        lines.append(f"  export ODDISH_API_URL={endpoints.api}")
    lines += [
        f"  oddish run {EXAMPLE_TASK} -a oracle --env local --n-trials 2",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


async def serve_api(
    server: uvicorn.Server, sock: socket.socket, announce: Callable[[], None]
) -> None:
    async def announce_when_started() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        announce()

    announcer = asyncio.create_task(announce_when_started())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()


def run_up(
    *,
    port: int = 8000,
    temporal_port: int = 7233,
    ui_port: int = 8233,
    home: Path | None = None,
    host: str = "127.0.0.1",
) -> int:
    """Start everything, serve until SIGINT/SIGTERM, stop everything; returns the exit code."""
    from oddish.config import get_settings

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # Their INFO lines are every command they run, with its full output.
    for chatty in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # pgserver falls back to /tmp for its lock file without XDG_RUNTIME_DIR, which is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    settings = get_settings()
    from oddish.api import exposure

    problem = exposure.exposure_problem(host)
    if problem is not None:
        print(f"oddish: {problem}", file=sys.stderr)
        return exposure.REFUSED_EXIT_CODE
    home = (home or settings.home).expanduser().resolve()
    lock = HomeLock(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"oddish: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"oddish: cannot use {home} as home ({exc.strerror}); pass --home", file=sys.stderr)
        return 1
    try:
        return _run_holding_home(
            port=port, temporal_port=temporal_port, ui_port=ui_port, home=home, host=host
        )
    finally:
        lock.release()


def _run_holding_home(*, port: int, temporal_port: int, ui_port: int, home: Path, host: str) -> int:
    from oddish.config import get_settings

    settings = get_settings()
    embedded_temporal = not settings.temporal_address
    try:
        sock = bind_api_socket(host, port)
        if embedded_temporal:
            require_free(temporal_port, "--temporal-port")
            require_free(ui_port, "--ui-port")
    except PortInUse as exc:
        print(f"oddish: {exc}", file=sys.stderr)
        return 1

    gate = SignalGate()
    gate.install()
    began = time.monotonic()
    try:
        with sock, ExitStack() as running:
            # Callbacks run last-in first-out: Temporal stops before Postgres.
            try:
                endpoints = _start_services(
                    running,
                    home=home,
                    temporal_port=temporal_port,
                    ui_port=ui_port,
                    api=f"http://{display_host(host)}:{port}",
                )
            except StopRequested:
                raise
            except Exception as exc:  # one readable line; the log has the traceback
                gate.phase = "stopping"
                log.debug("start-up failed", exc_info=True)
                print(f"oddish: could not start: {exc}", file=sys.stderr)
                return 1
            return _serve(gate, sock, endpoints, began, host)
    except StopRequested:
        print("oddish: stopped before start-up finished", file=sys.stderr)
        return 130
    finally:
        gate.phase = "stopping"
        gate.restore()


def _start_services(
    running: ExitStack, *, home: Path, temporal_port: int, ui_port: int, api: str
) -> Endpoints:
    from oddish.config import get_settings
    from oddish.embedded import TemporalDevServer, start_embedded_postgres

    settings = get_settings()
    keep_files_in_home(home, settings.model_fields_set)
    get_settings.cache_clear()
    # Before any service starts: a storage that cannot be used is one line naming the setting.
    from oddish.storage import get_storage

    get_storage().check()
    database = "DATABASE_URL / ODDISH_DATABASE_URL"
    if not settings.database_url:
        postgres = start_embedded_postgres(home / "postgres")
        running.callback(_stopping, "Postgres", postgres.stop)
        os.environ["ODDISH_DATABASE_URL"] = postgres.url
        database = f"embedded, data in {postgres.data_dir}"
        log.info("embedded Postgres %s (data in %s)", postgres.url, postgres.data_dir)

    temporal_ui: str | None = None
    temporal_address = settings.temporal_address
    if not temporal_address:
        temporal = TemporalDevServer(
            temporal_port,
            ui_port,
            home / "temporal.db",
            log_file=home / "temporal.log",
            die_with_parent=True,
        )
        running.callback(_stopping, "Temporal", temporal.stop)
        temporal.start()
        temporal_address = temporal.address
        temporal_ui = f"http://127.0.0.1:{ui_port}"
        os.environ["ODDISH_TEMPORAL_ADDRESS"] = temporal_address
        log.info(
            "embedded Temporal at %s, Web UI %s (log in %s)",
            temporal_address,
            temporal_ui,
            temporal.log_file,
        )
    get_settings.cache_clear()
    return Endpoints(
        api=api, temporal_address=temporal_address, temporal_ui=temporal_ui, database=database
    )


def keep_files_in_home(home: Path, explicit: set[str]) -> None:
    """Uploads and tasks stored before archives, Harbor's output, the local storage of task
    archives and the worker's task cache go under the home too, unless configured elsewhere.

    The records point at these files: left in /tmp (the library defaults) they would vanish at
    a reboot while the records that point at them stay; and the storage and cache default to the
    home of the settings (ODDISH_HOME), which --home need not be.
    """
    if "tasks_dir" not in explicit:
        os.environ["ODDISH_TASKS_DIR"] = str(home / "tasks")
    if "harbor_jobs_dir" not in explicit:
        os.environ["ODDISH_HARBOR_JOBS_DIR"] = str(home / "harbor-jobs")
    if "storage_dir" not in explicit:
        os.environ["ODDISH_STORAGE_DIR"] = str(home / "storage")
    if "task_cache_dir" not in explicit:
        os.environ["ODDISH_TASK_CACHE_DIR"] = str(home / "task-cache")


def _stopping(name: str, stop: Callable[[], None]) -> None:
    log.info("stopping %s", name)
    try:
        stop()
    except Exception:
        log.exception("could not stop %s", name)


def _serve(
    gate: SignalGate, sock: socket.socket, endpoints: Endpoints, began: float, host: str
) -> int:
    import uvicorn

    from oddish.api import exposure
    from oddish.api.app import create_app

    if (note := exposure.host_note(host)) is not None:
        log.warning("%s", note)
    # Access logs would drown the banner under the CLI's status polls; errors still show.
    config = uvicorn.Config(
        exposure.guard_hosts(create_app(run_workers=True), host),
        lifespan="on",
        access_log=False,
        log_level="info",
    )
    server = uvicorn.Server(config)
    gate.server = server
    gate.phase = "serving"

    def announce() -> None:
        print(banner(endpoints, time.monotonic() - began), flush=True)

    try:
        asyncio.run(serve_api(server, sock, announce))
    except SystemExit as exc:  # uvicorn exits when the app's start-up fails
        print("oddish: the API did not start; the reason is logged above", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) and exc.code else 1
    finally:
        gate.phase = "stopping"
    return 0


command = typer.Typer(add_completion=False)


UP_HELP = (
    "Start the whole system: Postgres, a Temporal dev server with its Web UI, and the API with a "
    "worker. Embedded services keep their data under --home; DATABASE_URL / ODDISH_DATABASE_URL "
    "and ODDISH_TEMPORAL_ADDRESS use servers of your own instead. Ctrl-C stops everything."
)


@command.command(help=UP_HELP)
def up(
    port: int = typer.Option(8000, help="port of the API"),
    temporal_port: int = typer.Option(7233, help="port of the embedded Temporal server"),
    ui_port: int = typer.Option(8233, help="port of the embedded Temporal Web UI"),
    home: Path = typer.Option(
        None, help="where the data lives (default: $ODDISH_HOME or ~/.oddish)"
    ),
    host: str = typer.Option("127.0.0.1", help="address the API listens on"),
) -> None:
    raise typer.Exit(
        run_up(port=port, temporal_port=temporal_port, ui_port=ui_port, home=home, host=host)
    )


if __name__ == "__main__":
    command()
