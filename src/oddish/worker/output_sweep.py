"""Outputs stranded on this machine's disk, stored at last.

An attempt's output is uploaded by its activity right after its result is recorded
(``oddish.trial_output``). A worker that dies during that upload (killed, its machine restarted)
leaves the attempt's directory under ``ODDISH_HARBOR_JOBS_DIR/<task>/<trial>/attempt-N`` while
the records already point at its storage prefix; the activity retried elsewhere finds the result
recorded and does not run the trial again, so nothing else would upload it.

At start and every ``SWEEP_INTERVAL_SEC`` the worker looks at the attempt directories under its
jobs directory and uploads (then removes) each one whose attempt is no longer running and whose
record points at storage: what an activity of this process is uploading right now is left to
it. Anything else stays as it is: an attempt still running (here or in another worker sharing
the directory), a cancelled attempt whose record holds the local path, a directory no record
knows. Uploading the same directory twice writes the same objects, so a sweep racing another
process's upload loses nothing. With ODDISH_KEEP_LOCAL_OUTPUT the directories are kept on
purpose and nothing is swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from oddish import queue, trial_output
from oddish.config import get_settings
from oddish.statuses import AttemptStatus
from oddish.storage import BaseStorage, trial_output_prefix

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SEC = 3600.0
# After a round that left an output unstored (the storage or the database still down).
RETRY_INTERVAL_SEC = 60.0
_ATTEMPT_DIR = re.compile(r"attempt-([1-9][0-9]{0,8})")


@dataclass(frozen=True)
class AttemptDirectory:
    path: Path
    task_id: str
    trial_id: str
    number: int


def _subdirectories(path: Path) -> list[str]:
    """Names of the real directories in ``path`` (never through a link)."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def find_attempt_directories(jobs_dir: Path) -> list[AttemptDirectory]:
    """Every ``<task>/<trial>/attempt-N`` directory under ``jobs_dir``."""
    found: list[AttemptDirectory] = []
    for task_id in _subdirectories(jobs_dir):
        for trial_id in _subdirectories(jobs_dir / task_id):
            for name in _subdirectories(jobs_dir / task_id / trial_id):
                if match := _ATTEMPT_DIR.fullmatch(name):
                    path = jobs_dir / task_id / trial_id / name
                    found.append(AttemptDirectory(path, task_id, trial_id, int(match[1])))
    return found


@dataclass
class SweepRound:
    stored: int = 0
    # Stranded outputs whose upload failed this round.
    left: int = 0


async def store_stranded_outputs(
    jobs_dir: Path | None = None, storage: BaseStorage | None = None
) -> SweepRound:
    """Upload the stranded attempt directories under ``jobs_dir`` (the settings' by default),
    one try each."""
    settings = get_settings()
    done = SweepRound()
    if settings.keep_local_output:
        return done
    found = await asyncio.to_thread(find_attempt_directories, jobs_dir or settings.harbor_jobs_dir)
    if not found:
        return done
    recorded = await queue.attempt_outputs(sorted({d.trial_id for d in found}))
    for directory in found:
        record = recorded.get((directory.trial_id, directory.number))
        if record is None or record.status == AttemptStatus.RUNNING:
            continue
        if directory.path in trial_output.uploading:
            continue
        try:
            prefix = trial_output_prefix(directory.task_id, directory.trial_id, directory.number)
        except ValueError:
            continue  # names no record of ours could have
        if record.harbor_trial_dir != prefix:
            continue
        log.info("output of %s was left on this disk; storing it now", prefix)
        if await trial_output.store_attempt_output(
            directory.path, prefix, storage=storage, retry=False
        ):
            done.stored += 1
        else:
            done.left += 1
    return done


async def sweep_periodically(stop: asyncio.Event, interval_sec: float = SWEEP_INTERVAL_SEC) -> None:
    """:func:`store_stranded_outputs` now and every ``interval_sec`` until ``stop``; after a
    round that failed or left an output unstored (the database or the storage down), the next
    comes in RETRY_INTERVAL_SEC."""
    while not stop.is_set():
        wait = interval_sec
        try:
            done = await store_stranded_outputs()
            if done.stored:
                log.info("stored %d attempt outputs left on this disk", done.stored)
            if done.left:
                log.warning(
                    "%d attempt outputs left on this disk could not be stored; trying again in "
                    "%.0fs",
                    done.left,
                    RETRY_INTERVAL_SEC,
                )
                wait = min(wait, RETRY_INTERVAL_SEC)
        except Exception:
            log.exception("storing outputs left on this disk failed; trying again later")
            wait = min(wait, RETRY_INTERVAL_SEC)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)
