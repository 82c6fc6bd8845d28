"""Uploaded task versions: each archive is checked once, stored under its content hash and
reused. POST /tasks/run checks an archive the same way and stores it as its task's archive
at once, keeping no upload.

An upload is kept as two files in ``uploads/``: ``<id>.tar.gz``, its files packed as a task's
archive is (``pack_task_dir``), and ``<id>.json``, its name and its ``TaskCheck``. A sweep copies
that archive into the new task's own place in storage, holding the task to the settings of the
moment from the check, without unpacking or loading it again. The archive is unpacked only to
be checked, in a scratch directory in memory (``/dev/shm``) when there is room, removed at once.
Uploads stored by an earlier version are a directory of the files, ``uploads/<id>/``, and a
``<id>.name`` file; sweeps still use them.

An upload is only needed until a sweep has used it: no record points at it afterwards. The
mtime of its ``<id>.json`` (or directory) is its last use (stored, uploaded again, or named by
a sweep), and ``collect_old_uploads`` deletes those unused for ``ODDISH_UPLOAD_RETENTION_SEC``,
with the leftovers of crashed processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel

from oddish.archives import ArchiveError, ExtractedTask, extract_task_archive
from oddish.config import Settings, get_settings
from oddish.db.records import RecordNotFound
from oddish.judge.models import judge_models
from oddish.queue import PreparedTask, store_task_files
from oddish.request_bodies import SweepSettings
from oddish.task_check import TaskCheck, check_task_dir
from oddish.task_store import pack_task_dir

log = logging.getLogger(__name__)

_UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
_META_SUFFIX = ".json"
_ARCHIVE_SUFFIX = ".tar.gz"
# An upload stored by an earlier version: its directory's name file.
_NAME_SUFFIX = ".name"
# An upload being deleted is renamed to this first (atomic), so it is never half there.
_TRASH_PREFIX = ".gc-"
# How often the API looks for unused uploads.
COLLECT_INTERVAL_SEC = 3600.0
# Memory-backed scratch space for checking an upload: creating files there costs a fraction of
# what it costs on a disk's file system, and nothing unpacked there has to outlive the request.
SCRATCH_IN_MEMORY = Path("/dev/shm")
# What an upload may unpack to there; a larger one is unpacked again on disk.
SCRATCH_IN_MEMORY_MAX_BYTES = 64 * 1024 * 1024


class _UploadMeta(BaseModel):
    name: str
    check: TaskCheck


@dataclass(frozen=True)
class StoredUpload:
    """An upload as a sweep uses it: its name, its check and its packed archive; or, stored by
    an earlier version, the directory of its files (``path``) and its name only."""

    name: str
    check: TaskCheck | None = None
    archive: Path | None = None
    path: Path | None = None


def _uploads_dir() -> Path:
    return get_settings().tasks_dir / "uploads"


def _incoming_dir() -> Path:
    return get_settings().tasks_dir / "incoming"


def _file(upload_id: str, suffix: str) -> Path:
    return _uploads_dir() / f"{upload_id}{suffix}"


def store_upload(source: BinaryIO) -> dict[str, Any]:
    """Unpack and check an archive; an unchanged task reuses the version already stored."""
    with _unpacked(source, get_settings()) as (task_dir, extracted):
        check = check_task_dir(task_dir)
        # Tests are checked at submission: a sweep may disable verification.
        problem = check.problem_without_verification
        if problem is not None:
            raise ArchiveError(f"The archive is not a task Harbor can run: {problem}.", 422)
        upload_id = _upload_id(extracted.content_hash, extracted.name)
        meta = _file(upload_id, _META_SUFFIX)
        # Touched first: a collection under way then puts it back.
        reused = _touch(meta) and _file(upload_id, _ARCHIVE_SUFFIX).is_file()
        if not reused:
            _store(upload_id, task_dir, _UploadMeta(name=extracted.name, check=check))
    return {
        "upload_id": upload_id,
        "content_hash": extracted.content_hash,
        "name": extracted.name,
        "files": extracted.files,
        "bytes": extracted.unpacked_bytes,
        "reused": reused,
    }


def prepare_task_of_archive(source: BinaryIO, body: SweepSettings, task_id: str) -> PreparedTask:
    """POST /tasks/run's work off the event loop: the archive unpacked and checked as an upload
    is, the sweep's submission made of it, and its files stored as task ``task_id``'s archive,
    with nothing kept in ``uploads/``."""
    with _unpacked(source, get_settings()) as (task_dir, extracted):
        submission = body.submission(task_dir, extracted.name, checked=check_task_dir(task_dir))
        if submission.run_analysis:
            judge_models(get_settings())  # refused before anything is stored
        return submission, store_task_files(submission, task_id)


@contextlib.contextmanager
def _unpacked(source: BinaryIO, settings: Settings) -> Iterator[tuple[Path, ExtractedTask]]:
    """The archive unpacked into a scratch directory, removed afterwards: in memory when there
    is room, else (or when it unpacks to more than SCRATCH_IN_MEMORY_MAX_BYTES) on disk."""
    limits = {
        "max_archive_bytes": settings.upload_max_bytes,
        "max_unpacked_bytes": settings.upload_max_unpacked_bytes,
        "max_file_bytes": settings.upload_max_file_bytes,
    }
    in_memory = _scratch_in_memory(source)
    if in_memory is not None:
        with tempfile.TemporaryDirectory(
            prefix="oddish-upload-", dir=in_memory, ignore_cleanup_errors=True
        ) as scratch:
            task_dir = Path(scratch) / "task"
            extracted = _unpack_in_memory(source, task_dir, limits)
            if extracted is not None:
                yield task_dir, extracted
                return
        source.seek(0)
    incoming = _incoming_dir()
    incoming.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix="upload-", dir=incoming, ignore_cleanup_errors=True
    ) as scratch:
        task_dir = Path(scratch) / "task"
        yield task_dir, extract_task_archive(source, task_dir, **limits)


def _unpack_in_memory(
    source: BinaryIO, task_dir: Path, limits: dict[str, int]
) -> ExtractedTask | None:
    """``extract_task_archive`` into memory, unpacking at most SCRATCH_IN_MEMORY_MAX_BYTES;
    None when the archive is larger than that or memory has no room left for it."""
    unpacked_limit = limits["max_unpacked_bytes"]
    try:
        return extract_task_archive(
            source,
            task_dir,
            **{**limits, "max_unpacked_bytes": min(unpacked_limit, SCRATCH_IN_MEMORY_MAX_BYTES)},
        )
    except ArchiveError as exc:
        if exc.status_code == 413 and unpacked_limit > SCRATCH_IN_MEMORY_MAX_BYTES:
            return None
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return None
        raise


def _scratch_in_memory(source: BinaryIO) -> Path | None:
    """The memory-backed scratch directory, if there is one and ``source`` can be read again
    should the upload not fit there."""
    try:
        seekable = source.seekable()
    except (AttributeError, ValueError):
        seekable = False
    if seekable and SCRATCH_IN_MEMORY.is_dir() and os.access(SCRATCH_IN_MEMORY, os.W_OK | os.X_OK):
        return SCRATCH_IN_MEMORY
    return None


def _store(upload_id: str, task_dir: Path, meta: _UploadMeta) -> None:
    """The upload's archive, then its meta file (what makes it stored), each written under a
    temporary name in the incoming directory and renamed: a reader never sees half of one."""
    incoming = _incoming_dir()
    incoming.mkdir(parents=True, exist_ok=True)
    _uploads_dir().mkdir(parents=True, exist_ok=True)
    temp = incoming / f"{secrets.token_hex(8)}{_ARCHIVE_SUFFIX}"
    try:
        with open(temp, "wb") as out:
            pack_task_dir(task_dir, out)
        os.replace(temp, _file(upload_id, _ARCHIVE_SUFFIX))
        temp = incoming / f"{secrets.token_hex(8)}{_META_SUFFIX}"
        temp.write_text(meta.model_dump_json())
        os.replace(temp, _file(upload_id, _META_SUFFIX))
    finally:
        temp.unlink(missing_ok=True)


def _upload_id(content_hash: str, name: str) -> str:
    """The same files under another name are another upload: a sweep names its task after the
    upload it uses, never after whoever first uploaded identical files."""
    return hashlib.sha256(f"{content_hash}\0{name}".encode()).hexdigest()


def stored_upload(upload_id: str) -> StoredUpload:
    """The upload a sweep names, its last use set to now; RecordNotFound if there is none."""
    if not _UPLOAD_ID.match(upload_id):
        raise _no_upload(upload_id)
    meta_path = _file(upload_id, _META_SUFFIX)
    archive = _file(upload_id, _ARCHIVE_SUFFIX)
    if _touch(meta_path):
        try:
            meta = _UploadMeta.model_validate_json(meta_path.read_bytes())
        except (OSError, ValueError):
            meta = None  # collected this instant, or unreadable: as if never stored
        if meta is not None and archive.is_file():
            return StoredUpload(name=meta.name, check=meta.check, archive=archive)
    path = _uploads_dir() / upload_id
    if not path.is_dir() or not _touch(path):
        raise _no_upload(upload_id)
    name = _file(upload_id, _NAME_SUFFIX)
    return StoredUpload(
        name=name.read_text().strip() if name.is_file() else upload_id[:12], path=path
    )


def _no_upload(upload_id: str) -> RecordNotFound:
    return RecordNotFound(
        f"no uploaded task {upload_id!r}: POST the archive to /tasks/upload first"
    )


def _touch(path: Path) -> bool:
    """Set the upload's last use to now; False if it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        # Only shortens the upload's life: it may be collected a retention after its upload.
        log.warning("could not mark upload %s as used: %s", path.name, exc)
    return True


def collect_old_uploads(now: float | None = None) -> int:
    """Delete the uploads unused for ``upload_retention_sec``; returns how many were deleted.

    Unused means: not stored, uploaded again or named by a sweep since (the mtime of its
    ``<id>.json``, or of its directory). Also deletes an archive or name file without its
    upload, entries of the incoming directory (an upload being stored) older than the retention,
    and scratch directories in memory older than an hour, which a killed process left. Safe to
    run from several processes at once.
    """
    settings = get_settings()
    now = time.time() if now is None else now
    cutoff = now - settings.upload_retention_sec
    uploads = _uploads_dir()
    deleted = 0
    for entry in _entries(uploads):
        name = entry.name
        if name.startswith(_TRASH_PREFIX):
            _remove(entry)  # a collection that was interrupted
        elif _UPLOAD_ID.match(name) and entry.is_dir() and not entry.is_symlink():
            deleted += _collect_one(entry, cutoff, entry.with_name(f"{name}{_NAME_SUFFIX}"))
        elif (upload_id := name.removesuffix(_META_SUFFIX)) != name and _UPLOAD_ID.match(upload_id):
            deleted += _collect_one(entry, cutoff, _file(upload_id, _ARCHIVE_SUFFIX))
    leftovers = [
        entry
        for entry in _entries(uploads)
        if (owner := _companion_of(entry.name)) is not None
        and not (uploads / owner).exists()
        and not _file(owner, _META_SUFFIX).exists()
    ]
    for entry in [*leftovers, *_entries(_incoming_dir())]:
        mtime = _mtime(entry)
        if mtime is not None and mtime < cutoff:
            _remove(entry)
    scratch_cutoff = max(cutoff, now - 3600)
    for entry in _entries(SCRATCH_IN_MEMORY):
        mtime = _mtime(entry)
        if entry.name.startswith("oddish-upload-") and mtime is not None and mtime < scratch_cutoff:
            _remove(entry)
    if deleted:
        log.info("deleted %d upload(s) unused for %.0f s", deleted, settings.upload_retention_sec)
    return deleted


def _companion_of(name: str) -> str | None:
    """The upload id an archive or name file belongs to; None for any other name."""
    for suffix in (_ARCHIVE_SUFFIX, _NAME_SUFFIX):
        upload_id = name.removesuffix(suffix)
        if upload_id != name and _UPLOAD_ID.match(upload_id):
            return upload_id
    return None


def _collect_one(path: Path, cutoff: float, companion: Path) -> int:
    """Delete the upload whose last use is ``path``'s mtime, and then its ``companion`` file,
    unless it was used since ``cutoff``."""
    mtime = _mtime(path)
    if mtime is None or mtime >= cutoff:
        return 0
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        path.rename(trash)
    except OSError:
        return 0  # gone already (another process collected it), or cannot be moved
    # Used between the look and the rename (a sweep's touch): put it back.
    mtime = _mtime(trash)
    if mtime is not None and mtime >= cutoff:
        try:
            trash.rename(path)
            return 0
        except OSError:
            pass  # uploaded again meanwhile: that copy is the one in use
    if not path.exists():
        companion.unlink(missing_ok=True)
    _remove(trash)
    return 1


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float | None:
    try:
        return path.lstat().st_mtime
    except OSError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


async def collect_uploads_periodically(
    stop: asyncio.Event, interval_sec: float = COLLECT_INTERVAL_SEC
) -> None:
    """Run ``collect_old_uploads`` now and every ``interval_sec`` until ``stop`` is set; a failed
    round is logged and the next one tried."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(collect_old_uploads)
        except Exception:
            log.exception("collecting unused uploads failed; trying again in %.0f s", interval_sec)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_sec)
