"""``oddish up`` on a machine with nothing configured: everything starts, runs a task, stops
without leaving a process behind, and a second run with the same home finds the earlier data."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from oddish.embedded import free_port, port_free
from oddish.workflows import workflow_id_for_task

pytestmark = pytest.mark.timeout(600)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks"
READY_LINE = "Press Ctrl-C to stop."


@dataclass
class Ports:
    api: int
    temporal: int
    ui: int

    def flags(self) -> list[str]:
        return [
            "--port",
            str(self.api),
            "--temporal-port",
            str(self.temporal),
            "--ui-port",
            str(self.ui),
        ]


@dataclass
class UpProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    started_sec: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def clean_env(tmp: Path) -> dict[str, str]:
    """This environment without any oddish setting, so that ``up`` must embed everything."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ODDISH_") and k != "DATABASE_URL"
    }
    env.update(
        ODDISH_TASKS_DIR=str(tmp / "tasks"),
        ODDISH_HARBOR_JOBS_DIR=str(tmp / "harbor-jobs"),
        HARBOR_TELEMETRY="0",
    )
    return env


def run_up(
    env: dict[str, str], home: Path, ports: Ports, log_path: Path, timeout: float = 120
) -> UpProcess:
    began = time.monotonic()
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "oddish.up", "--home", str(home), *ports.flags()],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = UpProcess(process, log_path, 0.0)
    deadline = began + timeout
    while READY_LINE not in up.log():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_quietly(up)
            raise AssertionError(f"oddish up did not start:\n{up.log()}")
        time.sleep(0.2)
    assert httpx.get(f"http://127.0.0.1:{ports.api}/health", timeout=10).status_code == 200
    up.started_sec = time.monotonic() - began
    return up


def stop_quietly(up: UpProcess) -> None:
    if up.process.poll() is None:
        os.killpg(up.process.pid, signal.SIGKILL)
        up.process.wait()


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postgres_processes(home: Path) -> list[psutil.Process]:
    """The embedded postmaster and its children: pg_ctl detaches them from our process tree."""
    pid_file = home / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return []
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


def stop_and_check_nothing_left(
    up: UpProcess, home: Path, ports: Ports, *, ctrl_c: bool = False
) -> float:
    """SIGTERM, or SIGINT to its process group as a terminal's Ctrl-C does; returns the seconds
    it took to exit, after checking that nothing survived it."""
    tree = [
        psutil.Process(up.process.pid),
        *psutil.Process(up.process.pid).children(recursive=True),
    ]
    tree += postgres_processes(home)
    names = {p.pid: p.name() for p in tree}
    assert any(name == "temporal" for name in names.values()), names
    assert any(name == "postgres" for name in names.values()), names

    began = time.monotonic()
    if ctrl_c:
        os.killpg(up.process.pid, signal.SIGINT)
    else:
        up.process.send_signal(signal.SIGTERM)
    try:
        code = up.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stop_quietly(up)
        raise AssertionError(f"oddish up did not stop within 30 s:\n{up.log()}") from None
    took = time.monotonic() - began
    assert code == 0, up.log()

    deadline = time.monotonic() + 5  # a child may need a moment to be reaped
    while (left := [p for p in tree if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left running: {[(p.pid, names[p.pid]) for p in left]}"
    assert not (home / "postgres" / "postmaster.pid").exists(), "Postgres was not shut down cleanly"
    for port in (ports.api, ports.temporal, ports.ui):
        assert port_free("127.0.0.1", port), f"port {port} still taken"
    return took


def task_archive(task_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(task_dir, arcname=task_dir.name)
    return buffer.getvalue()


async def wait_until_completed(http: httpx.AsyncClient, task_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = (await http.get(f"/tasks/{task_id}")).json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task['status']} after {timeout}s")
        await asyncio.sleep(0.5)


@pytest.fixture
def up_processes() -> Iterator[list[UpProcess]]:
    """Whatever a failing test leaves running is killed."""
    started: list[UpProcess] = []
    yield started
    for up in started:
        stop_quietly(up)


async def test_up_runs_a_task_stops_cleanly_and_keeps_its_data(
    tmp_path: Path, up_processes: list[UpProcess]
) -> None:
    home = tmp_path / "home"
    env = clean_env(tmp_path)
    ports = Ports(api=free_port(), temporal=free_port(), ui=free_port())
    api = f"http://127.0.0.1:{ports.api}"

    first = run_up(env, home, ports, tmp_path / "up-1.log")
    up_processes.append(first)
    printed = first.log()
    for url in (api, f"{api}/docs", f"http://127.0.0.1:{ports.ui}"):
        assert url in printed, printed
    assert f"export ODDISH_API_URL={api}" in printed  # not the CLI's default port
    assert "oddish run examples/tasks/hello-pass" in printed

    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        upload = await http.post(
            "/tasks/upload", files={"file": ("t.tar.gz", task_archive(EXAMPLES / "hello-pass"))}
        )
        assert upload.status_code == 200, upload.text
        sweep = await http.post(
            "/tasks/sweep",
            json={
                "upload_id": upload.json()["upload_id"],
                "configs": [{"agent": "oracle", "n_trials": 2}],
                "harbor": {"environment": "local"},
            },
        )
        assert sweep.status_code == 200, sweep.text
        task_id = sweep.json()["id"]
        began = time.monotonic()
        task = await wait_until_completed(http, task_id)
        ran_sec = time.monotonic() - began
        assert task["status"] == "completed", task
        assert [t["reward"] for t in task["trials"]] == [1.0, 1.0]
        assert (await http.get("/docs")).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{ports.ui}/", timeout=10).status_code == 200

    # While it runs: a second `up` on the same home, or on a taken port, refuses at once.
    again = subprocess.run(
        [sys.executable, "-m", "oddish.up", "--home", str(home), *ports.flags()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "already running" in again.stderr, again.stderr
    other_home = tmp_path / "other-home"
    taken = subprocess.run(
        [sys.executable, "-m", "oddish.up", "--home", str(other_home), *ports.flags()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taken.returncode == 1, taken.stderr
    assert f"port {ports.api} is already in use" in taken.stderr and "--port" in taken.stderr
    assert not (other_home / "postgres").exists()

    first_stop = stop_and_check_nothing_left(first, home, ports)

    second = run_up(env, home, ports, tmp_path / "up-2.log")
    up_processes.append(second)
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        listed = (await http.get("/tasks")).json()["tasks"]
        assert [t["status"] for t in listed if t["id"] == task_id] == ["completed"]
    client = await Client.connect(f"127.0.0.1:{ports.temporal}")
    described = await client.get_workflow_handle(workflow_id_for_task(task_id)).describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED
    second_stop = stop_and_check_nothing_left(second, home, ports, ctrl_c=True)

    print(
        f"\nup: ready in {first.started_sec:.1f}s (fresh home), {second.started_sec:.1f}s (again); "
        f"task of 2 oracle trials completed in {ran_sec:.1f}s; "
        f"stopped in {first_stop:.1f}s and {second_stop:.1f}s"
    )
