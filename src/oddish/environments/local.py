"""``local``: a Harbor environment that runs commands in a bubblewrap sandbox.

Each ``exec`` is a separate ``bwrap`` process: a fresh tmpfs root, its own PID, IPC, UTS and
cgroup namespaces (and network namespace when the phase has no network), run as an unprivileged
user in a user namespace with no capability at all. The agent's code is untrusted even when the
task is trusted; this is what keeps it from the host, and what it can still reach.

Who the sandbox's code runs as
    uid/gid ``SANDBOX_UID``/``SANDBOX_GID`` (1000, user ``sandbox``) inside, with empty
    effective, permitted, inheritable, ambient and bounding capability sets, ``no_new_privs``
    (set-user-ID binaries do not elevate), and no way to create further user namespaces. Outside,
    that uid is:

    - a worker running as root: ``SANDBOX_HOST_UID``/``SANDBOX_HOST_GID`` (65533), an id of no
      account. bwrap joins a user namespace made once per worker process (uid/gid 0 -> 0 for
      bwrap's own setup, 1000 -> 65533), sets up the mounts as that namespace's root, and
      ``setpriv`` (util-linux, on every Debian) switches to 1000 before the command runs, which
      drops every capability. Files the sandbox writes are owned by 65533 on the host (the worker,
      root, reads and deletes them); root-only host files (``/etc/shadow``, private keys) are
      unreadable; a set-user-ID file it makes is never root's. What the worker copies in is
      handed to 65533, as are the sandbox's own directories and Harbor's log directories of the
      trial.
      A writable user mount (``mounts``) outside the trial directory is not handed over: it
      must be writable by 65533 for the sandbox to write it. Needs user namespaces
      (``user.max_user_namespaces`` > 0), which root may always create.
    - a worker running as another user: that user (bwrap ``--unshare-user``, which maps the
      sandbox's uid to the caller's).

What it sees
    - read-only: the host's ``/usr``, ``/opt`` and ``/etc`` (``/bin /lib /lib64 /sbin`` as on the
      host) — the host's tools are what the task gets, Dockerfile ``RUN``/``ENV`` are ignored.
      Files there are read as the unprivileged user: world-readable ones only. ``/etc/passwd``
      and ``/etc/group`` are replaced by three entries (root, sandbox, nobody).
    - its own ``/proc`` (only its own processes; kernel-wide files such as ``/proc/cpuinfo``,
      ``/proc/meminfo``, ``/proc/sys`` (not writable) and, with network, ``/proc/net`` still
      describe the host), a minimal ``/dev`` (null, zero, full, random, urandom, tty, pts, and a
      world-writable ``shm``).
    - read-write, per environment: ``/logs /tests /solution /tmp``, its own empty home ``/root``
      and the task's workdir, backed by a scratch directory; Harbor's log directories
      (``/logs/agent``, ``/logs/verifier``, ``/logs/artifacts`` -> the trial directory) and any
      user mounts on top.
    - nothing else: not the host's ``/root``, ``/home``, ``/var``, ``/run``, ``/srv``, ``/mnt``,
      ``/sys`` or ``/tmp``, not other trials, not the worker's environment (commands get
      ``PATH HOME LANG TERM`` and the env Harbor passes).
    - the network: none with ``network_mode = "no-network"`` (only a loopback of its own);
      otherwise the host's network namespace, unfiltered: the internet, the host's loopback
      services (the oddish API, Temporal, Postgres when they listen on 127.0.0.1, any other local
      daemon) and abstract Unix sockets. Closing that needs a network namespace with a user-mode
      stack (slirp4netns or pasta) or a firewall owned by the host: not done here.
    - the kernel, shared (no seccomp filter), and no CPU, memory, disk or process limits.

The writable paths, per environment instance (``<scratch>`` is a fresh temp dir under
``$TMPDIR``; Harbor's mounts override a scratch dir on the same target)::

    sandbox path        host path
    /logs               <scratch>/logs
    /tests              <scratch>/tests
    /solution           <scratch>/solution
    /tmp                <scratch>/tmp
    /root (= $HOME)     <scratch>/root
    <workdir>           <scratch>/workdir   (task.toml [environment].workdir, default /app)
    /logs/agent ...     Harbor's trial directory (``mounts``), and user mounts

Files between the host and the sandbox (``oddish.environments.sandbox_files``)
    Every copy walks the sandbox's directories with ``O_NOFOLLOW`` at each component. Copies in
    (Harbor's ``upload_dir``/``upload_file``: tests, solution, environment files) replace a link
    or file standing in their way instead of writing through it. Copies out (``download_dir`` /
    ``download_file``: artifacts, logs) skip links and special files, refuse a link at or above
    their root, stream regular files and stop at ``DOWNLOAD_MAX_BYTES`` and
    ``DOWNLOAD_MAX_ENTRIES`` per call. Harbor's log directories are mounted into the trial
    directory (``mounted=True``: Harbor reads them in place), so after every command links and
    special files in them are deleted before the worker reads a reward or a log.

Each ``exec`` starts on a fresh root, so only files under the binds persist between commands,
and background processes do not outlive the command that started them (the PID namespace is
torn down). At ``start`` the task's ``environment/`` files (except the Dockerfile and compose
file) are copied into the workdir. The ``user`` argument of ``exec`` is accepted but every
command runs as the sandbox's user. Like Harbor's docker environment, an ``exec`` that outlives
its ``timeout_sec`` raises ``RuntimeError("Command timed out after N seconds")``.

Deployment note: with ``--unshare-pid`` bwrap exits without reaping its inner process
(containers/bubblewrap#697), leaving one zombie per exec for PID 1 to reap. Do not run the worker
as PID 1 of a container without an init (``docker run --init``, tini).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import posixpath
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, override

from harbor.environments.base import BaseEnvironment, ExecResult, OutputStream
from harbor.environments.capabilities import EnvironmentCapabilities
from harbor.models.task.config import NetworkMode, NetworkPolicy

from oddish.environments import sandbox_files

DEFAULT_WORKDIR = "/app"

# The sandbox's user, inside.
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "sandbox"
# Who that user is on the host when the worker runs as root: an id of no account or service.
SANDBOX_HOST_UID = 65533
SANDBOX_HOST_GID = 65533
# What one download_dir/download_file may copy out of the sandbox.
DOWNLOAD_MAX_BYTES = 256 * 1024 * 1024
DOWNLOAD_MAX_ENTRIES = 100_000

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
_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:{SANDBOX_USER}:/root:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"
_READ_CHUNK = 64 * 1024
_KILL_WAIT_SEC = 5.0
_START_CHECK_TIMEOUT_SEC = 30


@dataclass(frozen=True)
class _Bind:
    target: str  # absolute, normalised path inside the sandbox
    source: Path  # host path
    writable: bool


class LocalEnvironment(BaseEnvironment):
    """Bubblewrap sandbox on the local host: an unprivileged user without capabilities."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before super().__init__, which calls _validate_definition.
        self._bwrap = shutil.which("bwrap")
        self._as_root = os.geteuid() == 0
        self._setpriv = _find_setpriv() if self._as_root else None
        self._scratch_dir: Path | None = None
        self._binds: list[_Bind] = []
        self._log_dirs: list[Path] = []
        self._userns_fd: int | None = None
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
        if os.geteuid() == 0 and _find_setpriv() is None:
            raise SystemExit("The local environment, run as root, needs setpriv (util-linux).")

    @property
    def workdir(self) -> str:
        return _normalize(self.task_env_config.workdir or DEFAULT_WORKDIR)

    @property
    def scratch_dir(self) -> Path | None:
        """Host directory backing the sandbox's writable paths (None until started)."""
        return self._scratch_dir

    @property
    def _owner(self) -> tuple[int, int] | None:
        """Host owner of what the worker puts in the sandbox (None: the worker's own uid)."""
        return (SANDBOX_HOST_UID, SANDBOX_HOST_GID) if self._as_root else None

    @override
    def _validate_definition(self) -> None:
        if self._bwrap is None:
            raise FileNotFoundError("bubblewrap (`bwrap`) is not installed or not on PATH")
        if self._as_root and self._setpriv is None:
            raise FileNotFoundError(
                "setpriv (util-linux) is not installed under /usr: the local environment "
                "needs it to run commands unprivileged when the worker is root"
            )
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
        if self._as_root:
            self._userns_fd = await asyncio.to_thread(_sandbox_userns)
        safe_id = "".join(c if c.isalnum() or c in "-._" else "_" for c in self.session_id)
        scratch = Path(tempfile.mkdtemp(prefix=f"oddish-local-{safe_id}-"))
        self._scratch_dir = scratch
        await asyncio.to_thread(self._prepare_dirs, scratch)

        if self._enable_environment_dir_upload and self.environment_dir.is_dir():
            anchor, parts = self._locate(self.workdir, for_write=True)
            await asyncio.to_thread(
                sandbox_files.upload_dir,
                self.environment_dir,
                anchor,
                parts,
                owner=self._owner,
                ignore=_BUILD_FILES,
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
        await self._clean_log_dirs()
        scratch = self._scratch_dir
        if delete and scratch is not None:
            # Only our own temp dir: Harbor's mount sources are never under it
            # (binds exist only inside the sandbox's mount namespace).
            await asyncio.to_thread(_remove_tree, scratch)
            self._scratch_dir = None
            self._binds = []
            self._log_dirs = []

    @override
    async def prepare_logs_for_host(self) -> None:
        await self._clean_log_dirs()

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
        pass_fds = () if self._userns_fd is None else (self._userns_fd,)
        proc = await asyncio.create_subprocess_exec(
            *self._bwrap_argv(command, cwd or self.workdir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**_BASE_ENV, **(self._merge_env(env) or {})},
            pass_fds=pass_fds,
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
            self._procs.discard(proc)
            await self._clean_log_dirs(after_exec=True)
            # Same exception and message as Harbor's docker environment.
            raise RuntimeError(f"Command timed out after {timeout_sec} seconds") from None
        except BaseException:
            # Includes CancelledError (e.g. Harbor's agent/verifier timeouts):
            # _kill sends SIGKILL before its first await. The log directories are
            # cleaned by the next exec, prepare_logs_for_host or stop.
            await self._kill(proc)
            raise
        finally:
            self._procs.discard(proc)
        await self._clean_log_dirs(after_exec=True)
        return ExecResult(
            stdout=stdout or None,
            stderr=stderr or None,
            return_code=proc.returncode or 0,
        )

    @override
    async def upload_file(self, source_path: Path | str, target_path: str) -> None:
        anchor, parts = self._locate(target_path, for_write=True)
        await asyncio.to_thread(
            sandbox_files.upload_file,
            Path(source_path),
            anchor,
            parts,
            into_dir=target_path.endswith("/"),
            owner=self._owner,
        )

    @override
    async def upload_dir(self, source_dir: Path | str, target_dir: str) -> None:
        anchor, parts = self._locate(target_dir, for_write=True)
        await asyncio.to_thread(
            sandbox_files.upload_dir, Path(source_dir), anchor, parts, owner=self._owner
        )

    @override
    async def download_file(self, source_path: str, target_path: Path | str) -> None:
        anchor, parts = self._locate(source_path, for_write=False)
        into_dir = str(target_path).endswith("/")
        target_anchor, target_parts = self._host_location(Path(target_path), into_dir=into_dir)
        budget = self._budget()
        try:
            await asyncio.to_thread(
                sandbox_files.download_file,
                anchor,
                parts,
                target_anchor,
                target_parts,
                into_dir=into_dir,
                budget=budget,
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"No file at {source_path!r} in the local environment") from exc
        except OSError as exc:
            raise OSError(
                exc.errno, f"{source_path!r} not copied out of the sandbox: {exc.strerror}"
            ) from exc

    @override
    async def download_dir(self, source_dir: str, target_dir: Path | str) -> None:
        anchor, parts = self._locate(source_dir, for_write=False)
        target_anchor, target_parts = self._host_location(Path(target_dir), into_dir=True)
        budget = self._budget()
        try:
            await asyncio.to_thread(
                sandbox_files.download_dir,
                anchor,
                parts,
                target_anchor,
                target_parts,
                budget=budget,
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"No directory at {source_dir!r} in the local environment"
            ) from exc
        except OSError as exc:
            raise OSError(
                exc.errno, f"{source_dir!r} not copied out of the sandbox: {exc.strerror}"
            ) from exc
        if budget.skipped:
            shown = ", ".join(budget.skipped[:10])
            more = f" and {len(budget.skipped) - 10} more" if len(budget.skipped) > 10 else ""
            self.logger.warning(
                f"download of {source_dir!r} left out {len(budget.skipped)} entries: {shown}{more}"
            )

    def _budget(self) -> sandbox_files.Budget:
        # Read at call time, so the module constants can be changed at run time.
        return sandbox_files.Budget(
            bytes_left=DOWNLOAD_MAX_BYTES, entries_left=DOWNLOAD_MAX_ENTRIES
        )

    def _prepare_dirs(self, scratch: Path) -> None:
        self._binds = self._build_binds(scratch)
        (scratch / "passwd").write_text(_PASSWD)
        (scratch / "group").write_text(_GROUP)
        (scratch / "tmp").chmod(0o1777)
        trial_dir = _absolute(self.trial_paths.trial_dir)
        self._log_dirs = [
            b.source
            for b in self._binds
            if b.writable and b.source.is_relative_to(trial_dir) and b.source != trial_dir
        ]
        owner = self._owner
        if owner is None:
            return
        # The sandbox's user must be able to write its own directories and Harbor's log
        # directories of this trial; nothing else of the host is handed to it.
        for bind in self._binds:
            if (
                bind.writable
                and bind.source != scratch / "tmp"
                and (bind.source.is_relative_to(scratch) or bind.source in self._log_dirs)
            ):
                _chown_no_follow(bind.source, owner)

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
            source = _absolute(Path(mount["source"]).expanduser())
            if not source.exists():
                if mount.get("bind", {}).get("create_host_path") is False:
                    raise FileNotFoundError(f"Bind mount source {source} does not exist")
                source.mkdir(parents=True)  # as docker compose does
                if self._owner is not None and not mount.get("read_only"):
                    _chown_no_follow(source, self._owner)
            binds[target] = _Bind(target, source, writable=not mount.get("read_only"))
        # bwrap applies binds in order: parents must come before nested targets.
        return sorted(binds.values(), key=lambda b: (b.target.count("/"), b.target))

    def _bwrap_argv(self, command: str, cwd: str) -> list[str]:
        scratch = self._scratch_dir
        if scratch is None or self._bwrap is None:
            raise RuntimeError("The local environment is not started")
        argv = [self._bwrap]
        if self._userns_fd is not None and self._setpriv is not None:
            # Root worker: bwrap sets up the mounts as root of our user namespace, keeping only
            # what setpriv needs to become the sandbox's user, which clears every capability.
            argv += ["--userns", str(self._userns_fd), "--uid", "0", "--gid", "0"]
            argv += ["--cap-drop", "ALL"]
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
                argv += ["--cap-add", cap]
            runner = [
                self._setpriv,
                f"--reuid={SANDBOX_UID}",
                f"--regid={SANDBOX_GID}",
                "--clear-groups",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
            ]
        else:
            argv += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
            argv += ["--disable-userns", "--cap-drop", "ALL"]
            runner = []
        argv += [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
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
        argv += ["--ro-bind", str(scratch / "passwd"), "/etc/passwd"]
        argv += ["--ro-bind", str(scratch / "group"), "/etc/group"]
        # /dev/shm as in a container: POSIX shared memory and semaphores (multiprocessing).
        argv += ["--proc", "/proc", "--dev", "/dev", "--chmod", "1777", "/dev/shm"]
        for bind in self._binds:
            flag = "--bind" if bind.writable else "--ro-bind"
            argv += [flag, str(bind.source), bind.target]
        argv += ["--chdir", cwd, "--", *runner, "/bin/bash", "-c", command]
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

    async def _clean_log_dirs(self, *, after_exec: bool = False) -> None:
        """Delete links and special files the sandbox left where Harbor reads on the host.

        After an exec only when no other exec of this environment still runs (it could be
        writing there): the last one to finish cleans up."""
        if not self._log_dirs or (after_exec and self._procs):
            return
        removed = await asyncio.to_thread(_clean_dirs, list(self._log_dirs))
        if removed:
            shown = ", ".join(removed[:10])
            self.logger.warning(
                f"removed {len(removed)} links/special files from the trial's log "
                f"directories: {shown}"
            )

    def _locate(self, sandbox_path: str, *, for_write: bool) -> tuple[Path, tuple[str, ...]]:
        """The host directory of the bind holding a sandbox path, and the path's parts below it."""
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
        return bind.source, () if relative == "." else tuple(relative.split("/"))

    def _host_location(self, path: Path, *, into_dir: bool) -> tuple[Path, tuple[str, ...]]:
        """Where a download writes: walked without following links from the sandbox directory
        that holds it, if any (e.g. a mounted artifacts dir), else from the worker's own path."""
        path = _absolute(path)
        holders = [b.source for b in self._binds if path.is_relative_to(b.source)]
        if holders:
            anchor = max(holders, key=lambda p: len(p.parts))
            return anchor, path.relative_to(anchor).parts
        if into_dir:
            return path, ()
        return path.parent, (path.name,)

    def _check_user(self, user: str | int | None) -> None:
        if user is None or self._warned_user:
            return
        self._warned_user = True
        self.logger.debug(
            f"local environment runs every command as {SANDBOX_USER} (uid {SANDBOX_UID}); "
            f"ignoring user={user!r}"
        )


def _normalize(path: str) -> str:
    # posixpath.normpath keeps a leading "//"; collapse it as well.
    return "/" + posixpath.normpath(path).lstrip("/")


def _absolute(path: Path) -> Path:
    """Absolute and normalised, without resolving links."""
    return Path(os.path.abspath(path))


def _find_setpriv() -> str | None:
    """setpriv on the host, if it lives where the sandbox sees it too."""
    found = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    return found if found and found.startswith(("/usr/", "/bin/", "/sbin/")) else None


def _chown_no_follow(path: Path, owner: tuple[int, int]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fchown(fd, *owner)
    finally:
        os.close(fd)


def _clean_dirs(dirs: list[Path]) -> list[str]:
    removed: list[str] = []
    for path in dirs:
        try:
            removed += [f"{path}/{r}" for r in sandbox_files.remove_links_and_special_files(path)]
        except OSError:
            continue
    return removed


def _remove_tree(path: Path) -> None:
    if os.geteuid() != 0:
        # Directories the sandbox made unreadable (chmod 000) are opened up first. Root needs
        # none of it. Links are never followed.
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                sub = os.path.join(dirpath, name)
                if not os.path.islink(sub):
                    with contextlib.suppress(OSError):
                        os.chmod(sub, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


# --- the user namespace of a root worker's sandboxes -------------------------------------------

# Runs in a fresh (single-threaded) interpreter: a threaded process cannot unshare its user
# namespace. Once its maps are written it forbids nested user namespaces in it, then exits;
# the namespace lives on through the descriptor the worker keeps.
_USERNS_HELPER = """
import os, sys
os.unshare(os.CLONE_NEWUSER)
sys.stdout.write("1")
sys.stdout.flush()
if sys.stdin.read(1) == "1":
    with open("/proc/sys/user/max_user_namespaces", "w") as limit:
        limit.write("0")
"""
_userns_lock = threading.Lock()
_userns: int | None = None


def _sandbox_userns() -> int:
    """A descriptor of the user namespace every sandbox of this process joins (made once)."""
    global _userns
    with _userns_lock:
        if _userns is None:
            _userns = _make_userns()
        return _userns


def _make_userns() -> int:
    helper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _USERNS_HELPER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        if helper.stdout.read(1) != b"1":
            raise RuntimeError(
                "cannot create a user namespace for the local environment: "
                + helper.communicate(timeout=10)[1].decode(errors="replace").strip()
            )
        proc = Path(f"/proc/{helper.pid}")
        try:
            (proc / "uid_map").write_text(f"0 0 1\n{SANDBOX_UID} {SANDBOX_HOST_UID} 1\n")
            (proc / "gid_map").write_text(f"0 0 1\n{SANDBOX_GID} {SANDBOX_HOST_GID} 1\n")
        except OSError as exc:
            raise RuntimeError(
                f"cannot map the local environment's user to host uid/gid {SANDBOX_HOST_UID}/"
                f"{SANDBOX_HOST_GID} (is the worker root of the host's user namespace?): {exc}"
            ) from exc
        fd = os.open(proc / "ns" / "user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _, stderr = helper.communicate(b"1", timeout=10)
            if helper.returncode != 0:
                raise RuntimeError(
                    "cannot restrict the local environment's user namespace: "
                    + stderr.decode(errors="replace").strip()
                )
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
