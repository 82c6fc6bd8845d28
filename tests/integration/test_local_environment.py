"""Real Harbor trials through the bubblewrap ``local`` environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harbor.models.task.config import EnvironmentConfig as TaskEnvironmentConfig
from harbor.models.task.config import NetworkMode, NetworkPolicy
from harbor.models.trial.config import (
    AgentConfig,
    EnvironmentConfig,
    TaskConfig,
    TrialConfig,
)
from harbor.models.trial.paths import TrialPaths
from harbor.models.trial.result import TrialResult
from harbor.trial.trial import Trial

from oddish.environments import LOCAL_ENVIRONMENT_IMPORT_PATH
from oddish.environments.local import LocalEnvironment

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bwrap")

TASKS_DIR = Path(__file__).resolve().parents[2] / "examples" / "tasks"


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARBOR_TELEMETRY", "0")


async def run_trial(
    task: str,
    trials_dir: Path,
    *,
    agent: str = "oracle",
) -> TrialResult:
    trial = await Trial.create(
        TrialConfig(
            task=TaskConfig(path=TASKS_DIR / task),
            trials_dir=trials_dir,
            agent=AgentConfig(name=agent),
            environment=EnvironmentConfig(import_path=LOCAL_ENVIRONMENT_IMPORT_PATH),
        )
    )
    return await trial.run()


@pytest.mark.parametrize(
    ("task", "rewards"),
    [
        ("hello-pass", {"reward": 1.0}),
        ("partial-credit", {"reward": 0.5, "correctness": 1.0, "style": 0.0}),
        ("always-fail", {"reward": 0.0}),
        ("sleep", {"reward": 1.0}),
    ],
)
async def test_oracle(task: str, rewards: dict[str, float], tmp_path: Path) -> None:
    result = await run_trial(task, tmp_path)

    assert result.exception_info is None
    assert result.verifier_result is not None
    assert result.verifier_result.rewards == rewards
    # Logs were written straight into Harbor's trial dir through the bind mounts.
    trial_dir = tmp_path / result.trial_name
    assert (trial_dir / "agent" / "oracle.txt").exists()
    assert (trial_dir / "verifier" / "test-stdout.txt").exists()
    assert not list(
        Path(os.environ.get("TMPDIR", "/tmp")).glob(f"oddish-local-{result.trial_name}*")
    )


async def test_nop_gets_zero(tmp_path: Path) -> None:
    result = await run_trial("hello-pass", tmp_path, agent="nop")

    assert result.exception_info is None
    assert result.verifier_result is not None
    assert result.verifier_result.rewards == {"reward": 0.0}


# --- the environment on its own ------------------------------------------------


@pytest.fixture
async def local_env(tmp_path: Path) -> AsyncIterator[LocalEnvironment]:
    env_dir = tmp_path / "task" / "environment"
    env_dir.mkdir(parents=True)
    (env_dir / "Dockerfile").write_text("FROM ubuntu:24.04\n")
    (env_dir / "data.txt").write_text("data\n")
    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    env = LocalEnvironment(
        environment_dir=env_dir,
        environment_name="unit",
        session_id=f"unit-{uuid.uuid4().hex[:8]}__env",
        trial_paths=paths,
        task_env_config=TaskEnvironmentConfig(),
        mounts=[{"type": "bind", "source": str(paths.verifier_dir), "target": "/logs/verifier"}],
    )
    await env.start(force_build=False)
    yield env
    await env.stop(delete=True)


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (zombies have none)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


async def wait_until_gone(marker: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (pids := processes_with(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return pids


def sandbox_command(marker: str) -> str:
    # A plain child, a background child and one that escapes into its own
    # session/process group: all must die with the sandbox.
    inner = f"sleep 300; : {marker}"
    return f"bash -c '{inner}' & setsid bash -c '{inner}' & bash -c '{inner}'"


async def test_exec_timeout_kills_sandbox(local_env: LocalEnvironment) -> None:
    marker = f"oddish-timeout-{uuid.uuid4().hex}"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        await local_env.exec(sandbox_command(marker), timeout_sec=1)

    assert time.monotonic() - started < 10
    assert await wait_until_gone(marker) == []


async def test_cancelled_exec_kills_sandbox(local_env: LocalEnvironment) -> None:
    marker = f"oddish-cancel-{uuid.uuid4().hex}"
    task = asyncio.create_task(local_env.exec(sandbox_command(marker)))
    deadline = time.monotonic() + 5
    while len(processes_with(marker)) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert processes_with(marker), "sandbox never started"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Killed synchronously before CancelledError propagated (zombies have no cmdline).
    assert await wait_until_gone(marker) == []


async def test_stop_kills_running_exec(local_env: LocalEnvironment) -> None:
    marker = f"oddish-stop-{uuid.uuid4().hex}"
    task = asyncio.create_task(local_env.exec(sandbox_command(marker)))
    while not processes_with(marker):
        await asyncio.sleep(0.05)

    await local_env.stop(delete=False)

    result = await task
    assert result.return_code != 0
    assert await wait_until_gone(marker) == []


async def test_paths_and_transfers(
    local_env: LocalEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODDISH_HOST_SECRET", "do-not-leak")
    result = await local_env.exec("pwd; cat data.txt; ls; echo err >&2")
    assert result.return_code == 0
    assert result.stdout == "/app\ndata\ndata.txt\n"  # Dockerfile not copied
    assert result.stderr == "err\n"

    # Harbor's bind mount: written inside, visible on the host at once.
    await local_env.exec("echo 1 > /logs/verifier/reward.txt")
    assert (local_env.trial_paths.verifier_dir / "reward.txt").read_text() == "1\n"

    # Scratch dirs persist between execs; the tmpfs root does not.
    await local_env.exec("echo kept > /tmp/a; echo lost > /b")
    check = await local_env.exec("cat /tmp/a; test -e /b || echo gone")
    assert check.stdout == "kept\ngone\n"

    source = tmp_path / "up"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f.txt").write_text("hi")
    await local_env.upload_dir(source, "/solution")
    await local_env.upload_file(source / "sub" / "f.txt", "/app/")
    listing = await local_env.exec("cat /solution/sub/f.txt /app/f.txt")
    assert listing.stdout == "hihi"

    await local_env.download_dir("/solution", tmp_path / "down")
    assert (tmp_path / "down" / "sub" / "f.txt").read_text() == "hi"
    await local_env.download_file("/tmp/a", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "kept\n"

    with pytest.raises(ValueError, match="outside"):
        await local_env.upload_file(source / "sub" / "f.txt", "/etc/f.txt")
    with pytest.raises(ValueError, match="outside"):
        await local_env.download_file("/app/../usr/bin/env", tmp_path / "env")

    result = await local_env.exec("echo $HOME $FOO; pwd", cwd="/tmp", env={"FOO": "bar"})
    assert result.stdout == "/root bar\n/tmp\n"
    assert "ODDISH_HOST_SECRET" not in ((await local_env.exec("env")).stdout or "")

    scratch = local_env.scratch_dir
    assert scratch is not None and scratch.is_dir()
    await local_env.stop(delete=True)
    assert not scratch.exists()
    assert local_env.trial_paths.verifier_dir.is_dir()  # Harbor's dir untouched


async def test_network_policy(local_env: LocalEnvironment) -> None:
    host_netns = os.readlink("/proc/self/ns/net") + "\n"
    netns = "readlink /proc/self/ns/net"
    assert (await local_env.exec(netns)).stdout == host_netns

    await local_env.set_network_policy(NetworkPolicy(network_mode=NetworkMode.NO_NETWORK))
    assert (await local_env.exec(netns)).stdout != host_netns
    interfaces = await local_env.exec("tail -n +3 /proc/net/dev | cut -d: -f1")
    assert interfaces.stdout is not None and interfaces.stdout.split() == ["lo"]

    await local_env.set_network_policy(NetworkPolicy(network_mode=NetworkMode.PUBLIC))
    assert (await local_env.exec(netns)).stdout == host_netns
