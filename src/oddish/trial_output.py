"""Each trial attempt's Harbor output, kept in storage so that it outlives the worker's machine.

Harbor writes an attempt's output to a local directory on the worker
(``ODDISH_HARBOR_JOBS_DIR/<task>/<trial>/attempt-N``). Once the attempt's result is recorded,
:func:`store_attempt_output` uploads that whole directory to storage under
``tasks/<task>/trials/<trial>/attempt-N/`` (``keys.trial_output_prefix``), retrying with backoff
for as long as the storage is unavailable, then removes the local directory (unless
``ODDISH_KEEP_LOCAL_OUTPUT``). The records (``harbor_trial_dir`` of the trial and of the
attempt) hold that prefix; the API reads the output from there (``oddish.api.trial_files``).

Attempts recorded before outputs went to storage hold an absolute path instead (a legacy
location, :func:`oddish.task_store.is_legacy_location`), still read from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from oddish.config import get_settings
from oddish.storage import BaseStorage, StorageError, get_storage

log = logging.getLogger(__name__)

# The attempt directories this process is uploading now: the sweep of stranded outputs
# (oddish.worker.output_sweep) leaves them to their activity.
uploading: set[Path] = set()

# Backoff between uploads while the storage fails: 1 s, doubling up to 30 s, for ever.
RETRY_FIRST_DELAY_SEC = 1.0
RETRY_MAX_DELAY_SEC = 30.0


def _upload(storage: BaseStorage, prefix: str, directory: Path) -> int | None:
    """Upload the directory's files under the prefix, then remove the directory unless it is to
    be kept (ODDISH_KEEP_LOCAL_OUTPUT); how many files, None without a directory (blocking).
    Moved where the storage can. One thread hop for all of it: on a busy worker each hop waits
    its turn behind the trials' own."""
    if not directory.is_dir():
        return None
    if get_settings().keep_local_output:
        return len(storage.put_tree(prefix, directory))
    files = len(storage.move_tree(prefix, directory))
    _remove_local(directory)
    return files


def _remove_local(directory: Path) -> None:
    """Remove the attempt's directory, and the trial's directory above it once empty (no other
    attempt of the trial writes there meanwhile: they run one after the other)."""
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(directory.parent)


async def store_attempt_output(
    directory: Path,
    prefix: str,
    *,
    storage: BaseStorage | None = None,
    retry: bool = True,
) -> bool:
    """Upload the attempt's output ``directory`` to ``prefix``, off the event loop; then remove
    the directory unless ODDISH_KEEP_LOCAL_OUTPUT. Whether the output is in storage now.

    With ``retry`` a failing storage is tried again (1 s, doubling to 30 s) until it takes the
    output: the caller has recorded the result already and keeps heartbeating meanwhile.
    Without, one try (a cancelled attempt must end soon). Whatever does not reach storage stays
    on disk: the directory is removed only after a complete upload (one the attempt's cancel
    came too late to stop included). A directory Harbor never made (the attempt failed before
    it ran) has nothing to store."""
    # Marked before the first await, so that a sweep round never takes it meanwhile.
    uploading.add(directory)
    try:
        return await _store(directory, prefix, storage or get_storage(), retry=retry)
    finally:
        uploading.discard(directory)


async def _store(directory: Path, prefix: str, store: BaseStorage, *, retry: bool) -> bool:
    delay = RETRY_FIRST_DELAY_SEC
    began = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            files = await asyncio.to_thread(_upload, store, prefix, directory)
            if files is None:
                return False
            break
        except StorageError as exc:
            if not retry:
                log.warning("output of %s not stored (%s); it stays in %s", prefix, exc, directory)
                return False
            log.warning(
                "output of %s: storage failed (%s: %s); trying again in %.1fs, meanwhile it "
                "stays in %s",
                prefix,
                type(exc).__name__,
                exc,
                delay,
                directory,
            )
        except Exception:
            # Not the storage: the directory itself cannot be read. Trying again would not help.
            log.exception("output of %s not stored; it stays in %s", prefix, directory)
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_DELAY_SEC)
    log.info(
        "output of %s stored: %d files in %.1fs (%d tries)",
        prefix,
        files,
        time.monotonic() - began,
        tries,
    )
    return True
