"""Real services for the tests: an embedded Postgres (or $DATABASE_URL), a Temporal dev server,
and oddish worker processes started as subprocesses."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from temporalio.client import Client

from helpers import reset_settings, serve_api
from oddish.db.connection import dispose_engine, plain_dsn
from oddish.embedded import TemporalDevServer, free_port, start_postgres

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "tasks"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oddish")


@pytest.fixture(scope="session")
def database_url(work_dir: Path) -> Iterator[str]:
    """A fresh database on $DATABASE_URL's server, or on an embedded Postgres."""
    base = os.environ.get("DATABASE_URL") or start_postgres(work_dir / "pg")
    name = f"oddish_test_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(plain_dsn(base))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    os.environ.pop("DATABASE_URL", None)
    yield url


@pytest.fixture(scope="session")
def temporal_server(work_dir: Path) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(
        port=free_port(), ui_port=None, db_file=None, log_file=work_dir / "temporal.log"
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oddish_env(
    database_url: str, temporal_server: TemporalDevServer, work_dir: Path
) -> dict[str, str]:
    """Settings shared by this process and every worker it starts."""
    env = {
        "ODDISH_DATABASE_URL": database_url,
        "ODDISH_TEMPORAL_ADDRESS": temporal_server.address,
        "ODDISH_TASKS_DIR": str(work_dir / "tasks"),
        "ODDISH_HARBOR_JOBS_DIR": str(work_dir / "harbor-jobs"),
        "ODDISH_HOME": str(work_dir / "home"),
        "ODDISH_TRIAL_HEARTBEAT_TIMEOUT_SEC": "6",
        "ODDISH_TRIAL_RETRY_INITIAL_INTERVAL_SEC": "1",
        "ODDISH_TRIAL_RETRY_MAX_INTERVAL_SEC": "2",
        "ODDISH_DISPATCHER_POLL_INTERVAL_SEC": "2",
        "HARBOR_TELEMETRY": "0",
        # Trials in the worker's main process, but for the fault tests and the end-to-end test
        # (start_worker), which run them as deployments do, in a trial process of their own:
        # each process costs a Python with Harbor imported, and the tests start many workers.
        "ODDISH_TRIAL_PROCESSES": "0",
    }
    reset_settings(**env)
    return env


@pytest.fixture(scope="session")
async def migrated(oddish_env: dict[str, str]) -> AsyncIterator[None]:
    from oddish.db import migrations

    # An engine made before these settings (by a unit test, say) points at another database.
    await dispose_engine()
    await migrations.upgrade()
    yield
    await dispose_engine()


@pytest.fixture(scope="session")
async def temporal_client(oddish_env: dict[str, str], migrated: None) -> Client:
    from oddish.temporal_gateway import connect

    return await connect()


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def task_queue(oddish_env: dict[str, str]) -> Iterator[str]:
    """A task queue of this test's own, so workers of other tests never take its work."""
    name = f"oddish-test-{secrets.token_hex(4)}"
    reset_settings(ODDISH_TEMPORAL_TASK_QUEUE=name)
    yield name
    reset_settings(ODDISH_TEMPORAL_TASK_QUEUE="oddish")


@pytest.fixture
def start_worker(
    oddish_env: dict[str, str],
    task_queue: str,
    work_dir: Path,
    migrated: None,
    request: pytest.FixtureRequest,
):
    workers: list[WorkerProcess] = []
    # Deaths, restarts and pauses are tested on workers as deployed: trials in a process of
    # their own.
    in_processes = "faults" in request.path.parts or request.path.name == "test_end_to_end.py"

    def start(*args: str, **extra_env: str) -> WorkerProcess:
        env = {
            **os.environ,
            **oddish_env,
            "ODDISH_TEMPORAL_TASK_QUEUE": task_queue,
            **({"ODDISH_TRIAL_PROCESSES": "1"} if in_processes else {}),
            **extra_env,
        }
        log_path = work_dir / f"worker-{task_queue}-{len(workers)}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "oddish.worker", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log_path)
        workers.append(worker)
        deadline = time.monotonic() + 60
        while "runner: worker on task queue" not in worker.log():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.log()}")
            time.sleep(0.2)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def api(
    oddish_env: dict[str, str], task_queue: str, work_dir: Path, migrated: None
) -> Iterator[str]:
    env = {
        **os.environ,
        **oddish_env,
        "ODDISH_TEMPORAL_TASK_QUEUE": task_queue,
        "ODDISH_UPLOAD_MAX_BYTES": str(2 * 1024 * 1024),
    }
    """An API process on this test's own task queue, with no worker of its own."""
    process, url = serve_api(env, work_dir / f"api-{task_queue}.log", "--no-workers")
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Each phase's report on its test (``item.report_call``, say), for fixtures that act when a
    test failed (the browser tests' screenshot)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
