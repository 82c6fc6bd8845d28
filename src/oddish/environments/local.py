"""``local``: a Harbor environment that runs commands in a bubblewrap sandbox.

FOR TRUSTED TASKS ONLY. bubblewrap isolates mounts, PIDs, IPC, hostname and
(optionally) the network, but commands run as the worker's own uid (root here)
with its capabilities, see the host's ``/usr /bin /lib /lib64 /sbin /etc /opt``
read-only and share its kernel. It is a convenience for fast local runs of
tasks you wrote, not a security boundary.

Each environment instance owns a host scratch directory (a fresh temp dir under
``$TMPDIR``) whose subdirectories are bound writable into every sandbox:

    sandbox path        host path
    /logs               <scratch>/logs
    /tests              <scratch>/tests
    /solution           <scratch>/solution
    /tmp                <scratch>/tmp
    /root (= $HOME)     <scratch>/root
    <workdir>           <scratch>/workdir   (task.toml [environment].workdir, default /app)

Harbor's bind mounts (``mounts``: /logs/agent, /logs/verifier, /logs/artifacts
-> the trial directory, plus any user mounts) are layered on top, so logs and
rewards written inside land directly in Harbor's trial directory; the
environment therefore reports ``mounted=True`` and Harbor does not copy logs.

Each ``exec`` is a separate ``bwrap`` process on a fresh tmpfs root, so only
files under the binds above persist between commands, and background processes
do not outlive the command that started them (the PID namespace is torn down).
At ``start`` the task's ``environment/`` files (except the Dockerfile and compose
file, which cannot be built here) are copied into the workdir. The Dockerfile's
``RUN``/``ENV``/``WORKDIR`` are ignored: the host's installed tools are what the
task gets.

The ``user`` argument of ``exec`` is accepted but every command runs as the
worker's uid: switching users would need a user namespace and would not change
file ownership on the host anyway.

Like Harbor's docker environment, an ``exec`` that outlives its ``timeout_sec``
raises ``RuntimeError("Command timed out after N seconds")``.

Deployment note: with ``--unshare-pid`` bwrap exits without reaping its inner
process (containers/bubblewrap#697), leaving one zombie per exec for PID 1 to
reap. Do not run the worker as PID 1 of a container without an init
(``docker run --init``, tini).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import posixpath
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, override

from harbor.environments.base import BaseEnvironment, ExecResult, OutputStream
from harbor.environments.capabilities import EnvironmentCapabilities
from harbor.models.task.config import NetworkMode, NetworkPolicy

DEFAULT_WORKDIR = "/app"

# Host directories exposed read-only (or recreated as symlinks, e.g. /bin -> usr/bin).
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc", "/opt")
# Writable sandbox paths backed by subdirectories of the scratch directory.
_SCRATCH_DIRS = {
    "/logs": "logs",
    "/tests": "tests",
    "/solution": "solution",
    "/tmp": "tmp",
    "/root": "root",
}
# Build files that are meaningless without Docker; not copied into the workdir.
_BUILD_FILES = frozenset({"Dockerfile", "docker-compose.yaml", ".dockerignore"})
# The worker's own environment (secrets, DB URLs...) never reaches the sandbox.
_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
_READ_CHUNK = 64 * 1024
_KILL_WAIT_SEC = 5.0
_START_CHECK_TIMEOUT_SEC = 30


@dataclass(frozen=True)
class _Bind:
    target: str  # absolute, normalised path inside the sandbox
    source: Path  # host path
    writable: bool


class LocalEnvironment(BaseEnvironment):
    """Bubblewrap sandbox on the local host (trusted tasks only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before super().__init__, which calls _validate_definition.
        self._bwrap = shutil.which("bwrap")
        self._scratch_dir: Path | None = None
        self._binds: list[_Bind] = []
        self._procs: set[asyncio.subprocess.Process] = set()
        self._warned_user = False
        super().__init__(*args, **kwargs)

    @staticmethod
    @override
    def type() -> str:
        return "local"

    @property
    @override
    def capabilities(self) -> EnvironmentCapabilities:
        # Every exec starts a new sandbox, so the network policy can change
        # between phases for free; allowlists cannot be enforced.
        return EnvironmentCapabilities(
            disable_internet=True,
            dynamic_network_policy=True,
            mounted=True,
        )

    @classmethod
    @override
    def preflight(cls) -> None:
        if shutil.which("bwrap") is None:
            raise SystemExit("The local environment needs bubblewrap (`bwrap`) on PATH.")

    @property
    def workdir(self) -> str:
        return _normalize(self.task_env_config.workdir or DEFAULT_WORKDIR)

    @property
    def scratch_dir(self) -> Path | None:
        """Host directory backing the sandbox's writable paths (None until started)."""
        return self._scratch_dir

    @override
    def _validate_definition(self) -> None:
        if self._bwrap is None:
            raise FileNotFoundError("bubblewrap (`bwrap`) is not installed or not on PATH")
        if (self.environment_dir / "docker-compose.yaml").exists():
            raise ValueError("The local environment cannot run docker-compose task environments")
        workdir = self.task_env_config.workdir
        if workdir is not None and not posixpath.isabs(workdir):
            raise ValueError(f"[environment].workdir must be absolute, got {workdir!r}")
        for mount in self._mounts:
            if mount.get("type") != "bind":
                raise ValueError(f"The local environment only supports bind mounts, got {mount!r}")
            if _normalize(mount["target"]) == "/":
                raise ValueError("Cannot bind-mount over the sandbox root")

    @override
    async def _apply_network_policy(self, network_policy: NetworkPolicy) -> None:
        # Nothing to reconfigure: the next exec reads self.network_policy, which
        # the base class updates after this returns.
        if network_policy.network_mode == NetworkMode.ALLOWLIST:
            raise ValueError("The local environment cannot enforce network allowlists")

    @override
    async def start(self, force_build: bool) -> None:
        if self._scratch_dir is not None:
            return
        safe_id = "".join(c if c.isalnum() or c in "-._" else "_" for c in self.session_id)
        scratch = Path(tempfile.mkdtemp(prefix=f"oddish-local-{safe_id}-"))
        self._scratch_dir = scratch
        self._binds = self._build_binds(scratch)
        (scratch / "tmp").chmod(0o1777)

        if self._enable_environment_dir_upload and self.environment_dir.is_dir():
            await asyncio.to_thread(
                shutil.copytree,
                self.environment_dir,
                self._host_path(self.workdir, for_write=True),
                symlinks=True,
                dirs_exist_ok=True,
                ignore=lambda _dir, names: [n for n in names if n in _BUILD_FILES],
            )

        # Fail here, not in the agent phase, if bwrap cannot create namespaces.
        result = await self.exec("true", timeout_sec=_START_CHECK_TIMEOUT_SEC)
        if result.return_code != 0:
            raise RuntimeError(
                f"bubblewrap sandbox failed to start (exit {result.return_code}): "
                f"{(result.stderr or result.stdout or '').strip()}"
            )

    @override
    async def stop(self, delete: bool) -> None:
        for proc in list(self._procs):
            await self._kill(proc)
        self._procs.clear()
        scratch = self._scratch_dir
        if delete and scratch is not None:
            # Only our own temp dir: Harbor's mount sources are never under it
            # (binds exist only inside the sandbox's mount namespace).
            await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
            self._scratch_dir = None
            self._binds = []

    @override
    async def exec(
        self,
        command: str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_sec: int | None = None,
        user: str | int | None = None,
    ) -> ExecResult:
        self._check_user(self._resolve_user(user))
        proc = await asyncio.create_subprocess_exec(
            *self._bwrap_argv(command, cwd or self.workdir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**_BASE_ENV, **(self._merge_env(env) or {})},
            # Own process group, so one killpg hits the outer bwrap and the
            # sandbox's PID 1 together (tearing down the PID namespace) without
            # relying on bwrap's racy --die-with-parent (containers/bubblewrap#633).
            start_new_session=True,
        )
        self._procs.add(proc)
        try:
            async with asyncio.timeout(timeout_sec or None):
                stdout, stderr = await self._communicate(proc)
        except TimeoutError:
            await self._kill(proc)
            # Same exception and message as Harbor's docker environment.
            raise RuntimeError(f"Command timed out after {timeout_sec} seconds") from None
        except BaseException:
            # Includes CancelledError (e.g. Harbor's agent/verifier timeouts):
            # _kill sends SIGKILL before its first await.
            await self._kill(proc)
            raise
        finally:
            self._procs.discard(proc)
        return ExecResult(
            stdout=stdout or None,
            stderr=stderr or None,
            return_code=proc.returncode or 0,
        )

    @override
    async def upload_file(self, source_path: Path | str, target_path: str) -> None:
        target = self._host_path(target_path, for_write=True)
        await asyncio.to_thread(
            _copy_file, Path(source_path), target, into_dir=target_path.endswith("/")
        )

    @override
    async def upload_dir(self, source_dir: Path | str, target_dir: str) -> None:
        target = self._host_path(target_dir, for_write=True)
        await asyncio.to_thread(_copy_dir, Path(source_dir), target)

    @override
    async def download_file(self, source_path: str, target_path: Path | str) -> None:
        source = self._host_path(source_path, for_write=False)
        if not source.is_file():
            raise FileNotFoundError(f"No file at {source_path!r} in the local environment")
        await asyncio.to_thread(
            _copy_file, source, Path(target_path), into_dir=str(target_path).endswith("/")
        )

    @override
    async def download_dir(self, source_dir: str, target_dir: Path | str) -> None:
        source = self._host_path(source_dir, for_write=False)
        if not source.is_dir():
            raise FileNotFoundError(f"No directory at {source_dir!r} in the local environment")
        await asyncio.to_thread(_copy_dir, source, Path(target_dir))

    def _build_binds(self, scratch: Path) -> list[_Bind]:
        binds = {
            target: _Bind(target, scratch / name, writable=True)
            for target, name in {**_SCRATCH_DIRS, self.workdir: "workdir"}.items()
        }
        for bind in binds.values():
            bind.source.mkdir(parents=True, exist_ok=True)
        # Harbor's log mounts and user mounts, overriding scratch dirs on the same target.
        for mount in self._mounts:
            target = _normalize(mount["target"])
            source = Path(mount["source"]).expanduser().absolute()
            if not source.exists():
                if mount.get("bind", {}).get("create_host_path") is False:
                    raise FileNotFoundError(f"Bind mount source {source} does not exist")
                source.mkdir(parents=True)  # as docker compose does
            binds[target] = _Bind(target, source, writable=not mount.get("read_only"))
        # bwrap applies binds in order: parents must come before nested targets.
        return sorted(binds.values(), key=lambda b: (b.target.count("/"), b.target))

    def _bwrap_argv(self, command: str, cwd: str) -> list[str]:
        if self._scratch_dir is None or self._bwrap is None:
            raise RuntimeError("The local environment is not started")
        argv = [
            self._bwrap,
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            "sandbox",
        ]
        if self.network_policy.network_mode == NetworkMode.NO_NETWORK:
            argv.append("--unshare-net")
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                argv += ["--ro-bind", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for bind in self._binds:
            flag = "--bind" if bind.writable else "--ro-bind"
            argv += [flag, str(bind.source), bind.target]
        argv += ["--chdir", cwd, "--", "/bin/bash", "-c", command]
        return argv

    async def _communicate(self, proc: asyncio.subprocess.Process) -> tuple[str, str]:
        callback = self._output_callback()

        async def pump(stream: asyncio.StreamReader | None, name: OutputStream) -> str:
            if stream is None:
                return ""
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            parts: list[str] = []
            while chunk := await stream.read(_READ_CHUNK):
                text = decoder.decode(chunk)
                parts.append(text)
                if callback is not None and text:
                    await callback(text, name)
            parts.append(decoder.decode(b"", final=True))
            return "".join(parts)

        stdout, stderr, _ = await asyncio.gather(
            pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"), proc.wait()
        )
        return stdout, stderr

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            # An unreaped leader keeps its pgid reserved, so this cannot hit
            # an unrelated group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), _KILL_WAIT_SEC)

    def _host_path(self, sandbox_path: str, *, for_write: bool) -> Path:
        """Map a sandbox path to the host path behind the bind that contains it."""
        if not posixpath.isabs(sandbox_path):
            raise ValueError(f"Sandbox path must be absolute, got {sandbox_path!r}")
        if self._scratch_dir is None:
            raise RuntimeError("The local environment is not started")
        path = _normalize(sandbox_path)
        matches = [b for b in self._binds if path == b.target or path.startswith(b.target + "/")]
        if not matches:
            targets = ", ".join(b.target for b in self._binds)
            raise ValueError(
                f"{sandbox_path!r} is outside the local environment's bind mounts "
                f"({targets}); only files under those can be transferred"
            )
        bind = max(matches, key=lambda b: len(b.target))
        if for_write and not bind.writable:
            raise PermissionError(f"{sandbox_path!r} is on a read-only mount")
        relative = posixpath.relpath(path, bind.target)
        return bind.source if relative == "." else bind.source / relative

    def _check_user(self, user: str | int | None) -> None:
        if user in (None, 0, "0", "root") or self._warned_user:
            return
        self._warned_user = True
        self.logger.debug(
            f"local environment runs every command as uid {os.getuid()}; ignoring user={user!r}"
        )


def _normalize(path: str) -> str:
    # posixpath.normpath keeps a leading "//"; collapse it as well.
    return "/" + posixpath.normpath(path).lstrip("/")


def _copy_file(source: Path, target: Path, *, into_dir: bool) -> None:
    if into_dir or target.is_dir():
        target = target / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _copy_dir(source: Path, target: Path) -> None:
    """Copy the contents of ``source`` into ``target`` (like ``docker cp src/. dst``)."""
    if not source.is_dir():
        raise NotADirectoryError(f"{source} is not a directory")
    if target.exists() and source.resolve() == target.resolve():
        return  # the same bound host directory
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
