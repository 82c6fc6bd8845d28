"""Trials in processes of their own: the worker's main process runs the workflows, the slot
dispatcher and the bookkeeping; ``ODDISH_TRIAL_PROCESSES`` processes (default: one per core) each
run a Temporal worker of the trials' task queue (``<queue>-trials``) that executes ``run_trial``.

A trial spends most of its time in Harbor's own Python (sandbox set-up, agent, verifier, output
upload): on the main event loop it delays every grant and every workflow task of the process, and
one process uses one core. Apart, the trials of a worker use every core, and a grant is never
queued behind a trial's work.

The main process starts the trial processes, starts one again if it dies (its trials were lost
with it, and Temporal runs them again after their heartbeat timeout), and stops them when it
stops. Each one dies with the main process (``PR_SET_PDEATHSIG``): a worker that is killed takes
its trials with it, as a worker running them in-process would. ``ODDISH_TRIAL_PROCESSES=0`` runs
the trials' worker in the main process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from oddish.activities.heartbeat import MAX_INTERVAL_SEC as MAX_HEARTBEAT_INTERVAL_SEC
from oddish.activities.pauses import monitoring_pauses
from oddish.activities.trial import WORKER_PID_VARIABLE, run_trial
from oddish.config import Settings, get_settings
from oddish.db.connection import dispose_engine
from oddish.gc_freeze import freeze_startup_objects
from oddish.temporal_gateway import TemporalNotConfigured, connect, reconnect_delays
from oddish.worker.build_id import WORKER_BUILD_ID
from oddish.workflows.task_workflow import trial_task_queue

log = logging.getLogger(__name__)

# Trials one process runs at once (each waits for its slot before it is scheduled, so the limits
# of the keys decide how many actually run).
MAX_CONCURRENT_TRIALS = 100
STOP_GRACE_SEC = 15.0
RESTART_DELAY_SEC = 2.0
_PR_SET_PDEATHSIG = 1
# The main process's pid, for a trial process to tell it died before the death signal was set
# (and for the attempts it runs to name their worker).
PARENT_PID_VARIABLE = WORKER_PID_VARIABLE
# A pipe's write end, on which a trial process says it serves its task queue.
READY_FD_VARIABLE = "ODDISH_TRIAL_READY_FD"


def trial_process_count(settings: Settings) -> int:
    if settings.trial_processes is not None:
        return settings.trial_processes
    return max(1, os.cpu_count() or 1)


def trial_worker(client: Client, settings: Settings) -> Worker:
    """A worker of the trials' task queue."""
    return Worker(
        client,
        task_queue=trial_task_queue(settings.temporal_task_queue),
        build_id=WORKER_BUILD_ID,
        activities=[run_trial],
        max_concurrent_activities=MAX_CONCURRENT_TRIALS,
        graceful_shutdown_timeout=timedelta(seconds=5),
        max_heartbeat_throttle_interval=timedelta(seconds=MAX_HEARTBEAT_INTERVAL_SEC),
    )


class TrialProcesses:
    """The main process's trial processes: started, kept running, stopped."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = False
        # The read ends of the first processes' ready pipes, until they are ready.
        self._not_ready: list[int] = []

    def _start(self, slot: int, *, ready_pipe: bool = False) -> None:
        # Settings resolved by the main process (embedded services' addresses) come along.
        env = {**os.environ, PARENT_PID_VARIABLE: str(os.getpid())}
        pass_fds: tuple[int, ...] = ()
        if ready_pipe:
            read_end, write_end = os.pipe()
            env[READY_FD_VARIABLE] = str(write_end)
            pass_fds = (write_end,)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "oddish.worker.trial_processes"],
                env=env,
                pass_fds=pass_fds,
            )
        finally:
            if ready_pipe:
                os.close(write_end)
        if ready_pipe:
            self._not_ready.append(read_end)
        self._processes[slot] = process
        log.info("trial process %d started (pid %d)", slot, process.pid)

    def start(self) -> None:
        """Start the processes (``run`` keeps them running)."""
        for slot in range(self.count):
            self._start(slot, ready_pipe=True)

    async def ready(self, timeout_sec: float) -> bool:
        """Wait until every process started by ``start`` serves its task queue (or ended), at
        most ``timeout_sec``; whether they all did."""
        return await asyncio.to_thread(self._wait_ready, timeout_sec)

    def _wait_ready(self, timeout_sec: float) -> bool:
        deadline = time.monotonic() + timeout_sec
        while self._not_ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select(self._not_ready, [], [], remaining)
            for fd in readable:
                # A byte: it serves; end of file: it ended (run() starts it again).
                os.close(fd)
                self._not_ready.remove(fd)
        for fd in self._not_ready:
            os.close(fd)
        ready = not self._not_ready
        self._not_ready = []
        return ready

    async def run(self, stop: asyncio.Event) -> None:
        """Once ``start`` has started the processes: start again any that ends before ``stop``,
        then stop them."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                for slot, process in enumerate(self._processes):
                    if process is not None and process.poll() is not None and not stop.is_set():
                        log.warning(
                            "trial process %d (pid %d) ended with %s; starting it again",
                            slot,
                            process.pid,
                            process.returncode,
                        )
                        await asyncio.sleep(RESTART_DELAY_SEC)
                        self._start(slot)
        finally:
            await asyncio.shield(asyncio.to_thread(self.stop))

    def stop(self) -> None:
        """SIGTERM each (it lets its trials end their sandboxes), then SIGKILL what is left."""
        alive = [p for p in self._processes if p is not None and p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in alive:
            try:
                process.wait(timeout=STOP_GRACE_SEC)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def serve_trials(stop: asyncio.Event) -> None:
    """This process's trials' worker until ``stop``; Temporal unreachable is waited out."""
    settings = get_settings()
    if not settings.harbor_telemetry:
        os.environ.setdefault("HARBOR_TELEMETRY", "0")
    delays = reconnect_delays()
    freeze_startup_objects()
    with monitoring_pauses():
        while not stop.is_set():
            try:
                client = await connect()
                delays = reconnect_delays()
                worker = trial_worker(client, settings)
                running = asyncio.ensure_future(worker.run())
                log.info(
                    "trial worker on task queue %r (pid %d)",
                    trial_task_queue(settings.temporal_task_queue),
                    os.getpid(),
                )
                _say_ready()
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not running.done():
                    await worker.shutdown()
                await running
            except TemporalNotConfigured:
                raise
            except Exception as exc:
                delay = next(delays)
                log.warning("trial worker: Temporal unavailable (%s); again in %.0fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
    await dispose_engine()


def _say_ready() -> None:
    """Tell the main process (once) that this process serves its task queue."""
    fd = os.environ.pop(READY_FD_VARIABLE, None)
    if fd is not None:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(fd), b"1")
            os.close(int(fd))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve_trials(stop)


if __name__ == "__main__":
    _die_with_parent()
    # The main process may have died between the start and the prctl.
    if os.environ.get(PARENT_PID_VARIABLE) not in (None, str(os.getppid())):
        sys.exit(0)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_main())
