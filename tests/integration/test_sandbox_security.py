"""The ``local`` sandbox against an agent attacking the host.

The agent's code is untrusted even when the task is trusted. Each test plays one attack: links
planted in the sandbox's directories for the worker's copies to follow (host -> sandbox writes,
sandbox -> host reads), special and oversized files, and the privileges of the sandbox's user.
Most drive ``LocalEnvironment`` directly; the planted-link attacks also run as real trials, through
Harbor alone and through a worker.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
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
from harbor.trial.trial import Trial
from temporalio.client import Client

from helpers import local, wait_for_task
from oddish.environments import LOCAL_ENVIRONMENT_IMPORT_PATH
from oddish.environments import local as local_module
from oddish.environments.local import LocalEnvironment
from oddish.queue import create_task
from oddish.schemas import TaskSubmission
from oddish.storage import get_storage

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bwrap"),
    pytest.mark.timeout(300),
]

GENUINE = "genuine helper from the task\n"
VICTIM = "host file the agent must not change\n"


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARBOR_TELEMETRY", "0")


@pytest.fixture(params=[NetworkMode.PUBLIC, NetworkMode.NO_NETWORK], ids=["network", "no-network"])
def network_mode(request: pytest.FixtureRequest) -> NetworkMode:
    return request.param


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalEnvironment]:
    """A started environment with Harbor's three log mounts on a trial directory."""
    env_dir = tmp_path / "task" / "environment"
    env_dir.mkdir(parents=True)
    (env_dir / "Dockerfile").write_text("FROM ubuntu:24.04\n")
    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    (paths.artifacts_dir / "logs" / "artifacts").mkdir(parents=True)
    env = LocalEnvironment(
        environment_dir=env_dir,
        environment_name="security",
        session_id=f"security-{uuid.uuid4().hex[:8]}__env",
        trial_paths=paths,
        task_env_config=TaskEnvironmentConfig(),
        mounts=[
            {"type": "bind", "source": str(paths.verifier_dir), "target": "/logs/verifier"},
            {"type": "bind", "source": str(paths.agent_dir), "target": "/logs/agent"},
            {
                "type": "bind",
                "source": str(paths.artifacts_dir / "logs" / "artifacts"),
                "target": "/logs/artifacts",
            },
        ],
    )
    await env.start(force_build=False)
    yield env
    await env.stop(delete=True)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host file (and, beside it, a host directory) that only the worker may touch."""
    path = tmp_path / "host" / "victim.txt"
    path.parent.mkdir()
    path.write_text(VICTIM)
    (tmp_path / "host" / "dir").mkdir()
    (tmp_path / "host" / "dir" / "secret.txt").write_text(f"host secret {secrets.token_hex(8)}\n")
    return path


async def run(env: LocalEnvironment, command: str) -> str:
    result = await env.exec(command)
    assert result.return_code == 0, (command, result)
    return result.stdout or ""


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``, never following a link: relative path -> kind."""
    kinds = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            kind = (
                "link"
                if stat.S_ISLNK(mode)
                else "dir"
                if stat.S_ISDIR(mode)
                else "file"
                if stat.S_ISREG(mode)
                else "special"
            )
            kinds[str(path.relative_to(root))] = kind
    return kinds


def regular_file_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    for relative, kind in tree(root).items():
        if kind == "file":
            yield root / relative, (root / relative).read_bytes()


def assert_nothing_leaked(root: Path, *secrets_: bytes) -> None:
    """No link or special file under ``root``, and no regular file holding a secret."""
    kinds = tree(root)
    assert not {p: k for p, k in kinds.items() if k in ("link", "special")}, kinds
    for path, data in regular_file_bytes(root):
        for secret in secrets_:
            assert secret not in data, f"{path} holds {secret[:40]!r}"


# --- 1. host -> sandbox copies never follow a link in the sandbox's directories ---------------


async def test_upload_dir_replaces_a_planted_file_link(
    sandbox: LocalEnvironment, victim: Path, tmp_path: Path, network_mode: NetworkMode
) -> None:
    await sandbox.set_network_policy(NetworkPolicy(network_mode=network_mode))
    # What solve.sh did in the report: the verifier's upload of tests/ then wrote the host file.
    await run(sandbox, f"ln -sf {victim} /tests/helper.txt")
    tests = tmp_path / "task" / "tests"
    tests.mkdir()
    (tests / "helper.txt").write_text(GENUINE)
    (tests / "test.sh").write_text("#!/bin/bash\n")

    await sandbox.upload_dir(tests, "/tests")

    assert victim.read_text() == VICTIM
    # The verifier sees the task's own file, not the agent's link.
    assert await run(sandbox, "test ! -L /tests/helper.txt && cat /tests/helper.txt") == GENUINE


async def test_upload_never_writes_through_a_linked_directory(
    sandbox: LocalEnvironment, victim: Path, tmp_path: Path, network_mode: NetworkMode
) -> None:
    await sandbox.set_network_policy(NetworkPolicy(network_mode=network_mode))
    host_dir = victim.parent / "dir"
    await run(
        sandbox,
        f"ln -s {host_dir} /tests/sub; ln -s {host_dir} /app/linked; "
        f"ln -s {host_dir} /logs/verifier/nested; ln -sf {victim} /app/target.txt",
    )
    source = tmp_path / "upload"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "planted.txt").write_text(GENUINE)
    (source / "one.txt").write_text(GENUINE)
    (source / "sub" / "relative").symlink_to("planted.txt")  # the task's own link: kept

    await sandbox.upload_dir(source, "/tests")
    await sandbox.upload_dir(source, "/logs/verifier/nested")
    await sandbox.upload_file(source / "one.txt", "/app/linked/")
    await sandbox.upload_file(source / "one.txt", "/app/linked/deeper/one.txt")
    await sandbox.upload_file(source / "one.txt", "/app/target.txt")

    assert victim.read_text() == VICTIM
    assert sorted(p.name for p in host_dir.iterdir()) == ["secret.txt"]
    inside = await run(
        sandbox,
        "cat /tests/sub/planted.txt /logs/verifier/nested/one.txt /app/linked/one.txt "
        "/app/linked/deeper/one.txt /app/target.txt /tests/sub/relative",
    )
    assert inside == GENUINE * 6
    assert await run(sandbox, "readlink /tests/sub/relative") == "planted.txt\n"


# --- 2. sandbox -> host copies never follow links, skip special files, are bounded ------------


async def test_download_dir_copies_no_link(
    sandbox: LocalEnvironment, victim: Path, tmp_path: Path
) -> None:
    secret = (victim.parent / "dir" / "secret.txt").read_bytes()
    await run(
        sandbox,
        "mkdir -p /app/out/dir && echo ok > /app/out/ok.txt && echo in > /app/out/dir/in.txt && "
        f"ln -s /proc/self/environ /app/out/environ && ln -s {victim} /app/out/victim && "
        f"ln -s {victim.parent / 'dir'} /app/out/hostdir && ln -s / /app/out/dir/root",
    )
    target = tmp_path / "down"

    await sandbox.download_dir("/app/out", target)

    assert tree(target) == {"ok.txt": "file", "dir": "dir", "dir/in.txt": "file"}
    assert_nothing_leaked(target, secret, VICTIM.encode())


async def test_download_of_a_linked_root_copies_nothing(
    sandbox: LocalEnvironment, victim: Path, tmp_path: Path
) -> None:
    # The report's 6.7 GB: a log/artifact directory that is itself a link to a host directory.
    host_dir = victim.parent / "dir"
    await run(sandbox, f"ln -s {host_dir} /app/loot; ln -s {host_dir} /logs/artifacts/loot")
    target = tmp_path / "down"
    target.mkdir()

    for source in ("/app/loot", "/logs/artifacts/loot"):
        with pytest.raises(OSError):
            await sandbox.download_dir(source, target)
    assert list(target.iterdir()) == []


async def test_download_file_never_reads_through_a_link(
    sandbox: LocalEnvironment, victim: Path, tmp_path: Path
) -> None:
    await run(
        sandbox,
        f"ln -s /proc/self/environ /app/env.txt; ln -s {victim} /logs/agent/victim.txt; "
        f"ln -s {victim.parent} /app/via",
    )
    target = tmp_path / "down"
    target.mkdir()

    for source in ("/app/env.txt", "/logs/agent/victim.txt", "/app/via/victim.txt"):
        with pytest.raises(OSError):
            await sandbox.download_file(source, target / "copy.txt")
    assert list(target.iterdir()) == []


async def test_download_skips_special_files(sandbox: LocalEnvironment, tmp_path: Path) -> None:
    await run(sandbox, "mkdir /app/out && mkfifo /app/out/fifo && echo ok > /app/out/ok.txt")
    target = tmp_path / "down"

    await asyncio.wait_for(sandbox.download_dir("/app/out", target), 10)
    assert tree(target) == {"ok.txt": "file"}
    with pytest.raises(OSError):
        await asyncio.wait_for(sandbox.download_file("/app/out/fifo", tmp_path / "fifo"), 10)
    assert not (tmp_path / "fifo").exists()


async def test_download_is_bounded(
    sandbox: LocalEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "DOWNLOAD_MAX_BYTES", 1024 * 1024, raising=False)
    await run(
        sandbox,
        "mkdir /app/out && truncate -s 64M /app/out/sparse && head -c 2M /dev/zero > /app/out/big "
        "&& echo ok > /app/out/ok.txt",
    )
    target = tmp_path / "down"

    await sandbox.download_dir("/app/out", target)
    assert tree(target) == {"ok.txt": "file"}
    with pytest.raises(OSError):
        await sandbox.download_file("/app/out/big", tmp_path / "big")
    assert not (tmp_path / "big").exists()

    monkeypatch.setattr(local_module, "DOWNLOAD_MAX_ENTRIES", 3, raising=False)
    await run(sandbox, "mkdir /app/many && for i in 1 2 3 4 5 6; do echo $i > /app/many/$i; done")
    await sandbox.download_dir("/app/many", tmp_path / "many")
    assert len(tree(tmp_path / "many")) == 3


async def test_sparse_file_costs_neither_time_nor_memory(
    sandbox: LocalEnvironment, tmp_path: Path
) -> None:
    # 1 GiB of holes: over the default budget, so it is skipped without being read.
    await run(sandbox, "mkdir /app/out && truncate -s 1G /app/out/sparse && echo ok > /app/out/ok")
    target = tmp_path / "down"

    started = time.monotonic()
    await sandbox.download_dir("/app/out", target)
    assert time.monotonic() - started < 5
    assert tree(target) == {"ok": "file"}


# --- 3. an unprivileged user without capabilities -------------------------------------------


async def test_sandbox_user_has_no_privileges(sandbox: LocalEnvironment) -> None:
    assert (await run(sandbox, "id -u")).strip() != "0"
    status = await run(sandbox, "cat /proc/self/status")
    caps = dict(
        line.split(":\t")
        for line in status.splitlines()
        if line.startswith("Cap") and ":\t" in line
    )
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapAmb"] == "0000000000000000", caps
    assert caps["CapBnd"] == "0000000000000000", caps
    # What root with every capability could do in the old sandbox.
    for command in (
        "mount -t tmpfs x /tmp",
        "mknod /tmp/null c 1 3",
        "cat /etc/shadow",
        # Writes back the current value, so a sandbox that can write changes nothing.
        'printf "%s\\n" "$(cat /proc/sys/kernel/core_pattern)" > /proc/sys/kernel/core_pattern',
        "chown 0 /tmp",
    ):
        result = await sandbox.exec(command)
        assert result.return_code != 0, (command, result)


async def test_no_new_user_namespaces(sandbox: LocalEnvironment) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    result = await sandbox.exec("unshare --user --map-root-user id -u")
    assert result.return_code != 0, result


async def test_host_home_is_not_visible(sandbox: LocalEnvironment) -> None:
    home = Path("/root")
    if not os.access(home, os.W_OK):
        pytest.skip("needs a writable /root to plant a sentinel")
    sentinel = home / f".oddish-sandbox-probe-{uuid.uuid4().hex}"
    sentinel.write_text("host home\n")
    try:
        result = await sandbox.exec(f"ls -A /root; test ! -e {sentinel}")
        assert result.return_code == 0, result
        assert (result.stdout or "") == ""  # the sandbox's own, empty home
    finally:
        sentinel.unlink()


async def test_task_still_works_and_worker_owns_the_result(sandbox: LocalEnvironment) -> None:
    out = await run(
        sandbox,
        "set -e; python3 -c 'print(6 * 7)'; echo $HOME; whoami; "
        "python3 -c 'import multiprocessing as m; m.Lock()'; "
        "echo hi > /app/a.txt; sha256sum /app/a.txt | cut -c1-8; echo x > $HOME/.rc; "
        "mkdir -p /logs/agent/locked/sub && echo s > /logs/agent/locked/sub/f && "
        "chmod 000 /logs/agent/locked/sub /logs/agent/locked; "
        "mkdir /tmp/l && echo t > /tmp/l/f && chmod 000 /tmp/l",
    )
    assert out.split("\n")[:3] == ["42", "/root", "sandbox"]
    scratch = sandbox.scratch_dir
    assert scratch is not None
    written = sandbox.trial_paths.agent_dir / "locked"
    if os.getuid() == 0:
        # The sandbox's files are not root's on the host: no setuid-root binary can come out.
        assert written.lstat().st_uid != 0
        assert (scratch / "workdir" / "a.txt").lstat().st_uid != 0
    # The worker still removes all of it.
    shutil.rmtree(written)
    await sandbox.stop(delete=True)
    assert not scratch.exists()


# --- real trials: the planted links of the report ------------------------------------------------


def write_attack_task(root: Path, victim: Path, network_mode: NetworkMode) -> Path:
    """A task whose solution plants links for the verifier's upload and the artifact download."""
    task = root / "attack-task"
    (task / "environment").mkdir(parents=True)
    (task / "solution").mkdir()
    (task / "tests").mkdir()
    (task / "instruction.md").write_text("Write /app/done.txt.\n")
    (task / "task.toml").write_text(
        textwrap.dedent(
            f"""\
            schema_version = "1.4"

            [verifier]
            timeout_sec = 60.0

            [agent]
            timeout_sec = 60.0

            [environment]
            workdir = "/app"
            network_mode = "{network_mode.value}"
            """
        )
    )
    (task / "environment" / "Dockerfile").write_text("FROM ubuntu:24.04\nWORKDIR /app\n")
    host_dir = victim.parent / "dir"
    (task / "solution" / "solve.sh").write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            echo done > /app/done.txt
            ln -sf {victim} /tests/helper.txt
            ln -s /proc/self/environ /app/env.txt
            ln -s /proc/self/environ /logs/agent/environ.txt
            ln -s /proc/self/environ /logs/artifacts/environ.txt
            mkdir -p {host_dir} 2>/dev/null
            ln -s {host_dir} /app/loot
            """
        )
    )
    (task / "tests" / "helper.txt").write_text(GENUINE)
    (task / "tests" / "test.sh").write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            if [ ! -L /tests/helper.txt ] && [ "$(cat /tests/helper.txt)" = "{GENUINE.strip()}" ] \\
                && [ "$(cat /app/done.txt)" = done ]; then
              echo 1 > /logs/verifier/reward.txt
            else
              echo 0 > /logs/verifier/reward.txt
            fi
            """
        )
    )
    return task


async def test_trial_with_planted_links(
    tmp_path: Path, victim: Path, network_mode: NetworkMode
) -> None:
    task = write_attack_task(tmp_path, victim, network_mode)
    trial = await Trial.create(
        TrialConfig(
            task=TaskConfig(path=task),
            trials_dir=tmp_path / "trials",
            agent=AgentConfig(name="oracle"),
            environment=EnvironmentConfig(import_path=LOCAL_ENVIRONMENT_IMPORT_PATH),
            artifacts=["/app/env.txt", "/app/loot"],
        )
    )
    result = await trial.run()

    secret = (victim.parent / "dir" / "secret.txt").read_bytes()
    own_environ = Path("/proc/self/environ").read_bytes()[:200]
    assert_nothing_leaked(tmp_path / "trials" / result.trial_name, own_environ, secret)
    assert victim.read_text() == VICTIM
    assert result.verifier_result is not None
    assert result.verifier_result.rewards == {"reward": 1.0}


async def test_worker_trial_with_planted_links(
    start_worker, temporal_client: Client, oddish_env: dict[str, str], tmp_path: Path, victim: Path
) -> None:
    api_key = f"sentinel-{secrets.token_hex(8)}"
    start_worker(ODDISH_API_KEY=api_key)
    task = write_attack_task(tmp_path, victim, NetworkMode.PUBLIC)
    task_id = await create_task(
        TaskSubmission(task_path=task, configs=[local(artifacts=["/app/env.txt", "/app/loot"])]),
        client=temporal_client,
    )

    result = await wait_for_task(temporal_client, task_id)

    # What was kept of the trial: its output as uploaded to storage (the worker's copy is gone).
    [trial] = result["trials"]
    output = tmp_path / "stored-output"
    await asyncio.to_thread(get_storage().get_tree, trial["harbor_trial_dir"], output)
    assert any(output.rglob("result.json"))
    secret = (victim.parent / "dir" / "secret.txt").read_bytes()
    assert_nothing_leaked(output, api_key.encode(), secret)
    assert victim.read_text() == VICTIM
    assert trial["status"] == "success", trial
    assert trial["reward"] == 1.0


async def test_no_link_or_special_file_is_left_in_the_log_mounts(
    sandbox: LocalEnvironment, victim: Path
) -> None:
    # Harbor reads these directories on the host itself (reward.txt, agent logs): a link the
    # agent left there would be followed by the worker.
    await run(
        sandbox,
        f"ln -s {victim} /logs/verifier/reward.txt; ln -s /proc/self/environ /logs/agent/env; "
        "mkdir -p /logs/agent/sub && ln -s / /logs/agent/sub/root && mkfifo /logs/artifacts/fifo "
        "&& echo kept > /logs/agent/sub/log.txt",
    )

    trial_dir = sandbox.trial_paths.trial_dir
    kinds = tree(trial_dir)
    assert {p: k for p, k in kinds.items() if k in ("link", "special")} == {}
    assert (trial_dir / "agent" / "sub" / "log.txt").read_text() == "kept\n"
    assert victim.read_text() == VICTIM


async def test_copies_leave_the_event_loop_free(sandbox: LocalEnvironment, tmp_path: Path) -> None:
    """Copying a trial's output runs off the event loop, which heartbeats the trial and serves the
    API: a long copy on it once made Temporal give a finished trial up as lost."""
    await run(
        sandbox,
        "mkdir /app/bulk && for i in $(seq 1 2000); do "
        "head -c 64K /dev/urandom > /app/bulk/$i; done",
    )
    longest_gap = 0.0
    copying = True

    async def tick() -> None:
        nonlocal longest_gap
        last = time.monotonic()
        while copying:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now

    ticker = asyncio.ensure_future(tick())
    start = time.monotonic()
    await sandbox.download_dir("/app/bulk", tmp_path / "bulk")
    await sandbox.upload_dir(tmp_path / "bulk", "/app/back")
    took = time.monotonic() - start
    copying = False
    await ticker
    assert len(tree(tmp_path / "bulk")) == 2000
    print(f"\n2,000 files down and up in {took:.2f}s; longest event-loop gap {longest_gap:.3f}s")
    assert longest_gap < took / 3, "the loop went on running while the files were copied"
