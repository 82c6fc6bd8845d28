"""Uploaded task versions: each archive is unpacked once under its content hash and reused.

An upload is only needed until a sweep has used it: ``queue.create_task`` copies it into the
task's own archive in storage (``task_store.store_task_archive``), and no record points at the
upload afterwards. A stored upload's directory mtime is its last use (stored, uploaded again, or
named by a sweep), and ``collect_old_uploads`` deletes those unused for
``ODDISH_UPLOAD_RETENTION_SEC``, with extraction leftovers of crashed processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO

from oddish.archives import ArchiveError, extract_task_archive
from oddish.config import get_settings
from oddish.db.records import RecordNotFound
from oddish.task_check import task_dir_problem

log = logging.getLogger(__name__)

_UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")
_NAME_SUFFIX = ".name"
# An upload being deleted is renamed to this first (atomic), so it is never half there.
_TRASH_PREFIX = ".gc-"
# How often the API looks for unused uploads.
COLLECT_INTERVAL_SEC = 3600.0


def _uploads_dir() -> Path:
    return get_settings().tasks_dir / "uploads"


def store_upload(source: BinaryIO) -> dict[str, Any]:
    """Unpack and check an archive; an unchanged task reuses the version already stored."""
    settings = get_settings()
    incoming = get_settings().tasks_dir / "incoming" / secrets.token_hex(8)
    incoming.parent.mkdir(parents=True, exist_ok=True)
    try:
        extracted = extract_task_archive(
            source,
            incoming,
            max_archive_bytes=settings.upload_max_bytes,
            max_unpacked_bytes=settings.upload_max_unpacked_bytes,
            max_file_bytes=settings.upload_max_file_bytes,
        )
        # Tests are checked at submission: a sweep may disable verification.
        problem = task_dir_problem(incoming, disable_verification=True)
        if problem is not None:
            raise ArchiveError(f"The archive is not a task Harbor can run: {problem}.", 422)
        upload_id = _upload_id(extracted.content_hash, extracted.name)
        target = _uploads_dir() / upload_id
        reused = target.is_dir()
        if reused:
            _touch(target)
            reused = target.is_dir()  # collected just before the touch: store this copy
        if not reused:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                incoming.rename(target)
                (target.parent / f"{upload_id}{_NAME_SUFFIX}").write_text(extracted.name)
            except OSError:
                reused = target.exists()  # the same task uploaded twice at once
                if not reused:
                    raise
            _touch(target)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return {
        "upload_id": upload_id,
        "content_hash": extracted.content_hash,
        "name": extracted.name,
        "files": extracted.files,
        "bytes": extracted.unpacked_bytes,
        "reused": reused,
    }


def _upload_id(content_hash: str, name: str) -> str:
    """The same files under another name are another upload: a sweep names its task after the
    upload it uses, never after whoever first uploaded identical files."""
    return hashlib.sha256(f"{content_hash}\0{name}".encode()).hexdigest()


def upload_path(upload_id: str) -> Path:
    """The stored upload, its last use set to now (a sweep is about to copy it)."""
    path = _uploads_dir() / upload_id
    if not _UPLOAD_ID.match(upload_id) or not path.is_dir():
        raise RecordNotFound(
            f"no uploaded task {upload_id!r}: POST the archive to /tasks/upload first"
        )
    _touch(path)
    return path


def upload_name(upload_id: str) -> str:
    """The task's name as uploaded (folder name or task.toml name)."""
    sidecar = _uploads_dir() / f"{upload_id}{_NAME_SUFFIX}"
    return sidecar.read_text().strip() if sidecar.is_file() else upload_id[:12]


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError as exc:
        # Only shortens the upload's life: it may be collected a retention after its upload.
        log.warning("could not mark upload %s as used: %s", path.name, exc)


def collect_old_uploads(now: float | None = None) -> int:
    """Delete the uploads unused for ``upload_retention_sec``; returns how many were deleted.

    Unused means: not stored, uploaded again or named by a sweep since (the directory's mtime).
    Also deletes name files without their upload, and entries of the incoming directory (the
    extraction of an upload in progress) older than the retention, which a killed process left.
    Safe to run from several processes at once.
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
            deleted += _collect_one(entry, cutoff)
    orphans = [
        entry
        for entry in _entries(uploads)
        if entry.name.endswith(_NAME_SUFFIX)
        and not (uploads / entry.name.removesuffix(_NAME_SUFFIX)).exists()
    ]
    for entry in [*orphans, *_entries(settings.tasks_dir / "incoming")]:
        mtime = _mtime(entry)
        if mtime is not None and mtime < cutoff:
            _remove(entry)
    if deleted:
        log.info("deleted %d upload(s) unused for %.0f s", deleted, settings.upload_retention_sec)
    return deleted


def _collect_one(path: Path, cutoff: float) -> int:
    mtime = _mtime(path)
    if mtime is None or mtime >= cutoff:
        return 0
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        path.rename(trash)
    except OSError:
        return 0  # gone already (another process collected it), or cannot be moved
    # Used between the look and the rename (a sweep's upload_path): put it back.
    mtime = _mtime(trash)
    if mtime is not None and mtime >= cutoff:
        try:
            trash.rename(path)
            return 0
        except OSError:
            pass  # uploaded again meanwhile: that copy is the one in use
    _remove(trash)
    sidecar = path.with_name(f"{path.name}{_NAME_SUFFIX}")
    if not path.exists():
        sidecar.unlink(missing_ok=True)
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
