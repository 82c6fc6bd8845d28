"""Uploaded task versions: each archive is unpacked once under its content hash and reused."""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from oddish.api.archive import ArchiveError, extract_task_archive
from oddish.config import get_settings
from oddish.db.records import RecordNotFound
from oddish.task_check import task_dir_problem

_UPLOAD_ID = re.compile(r"^[0-9a-f]{64}$")


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
        )
        # Tests are checked at submission: a sweep may disable verification.
        problem = task_dir_problem(incoming, disable_verification=True)
        if problem is not None:
            raise ArchiveError(f"The archive is not a task Harbor can run: {problem}.", 422)
        target = _uploads_dir() / extracted.content_hash
        reused = target.exists()
        if not reused:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                incoming.rename(target)
                (target.parent / f"{extracted.content_hash}.name").write_text(extracted.name)
            except OSError:
                reused = target.exists()  # the same task uploaded twice at once
                if not reused:
                    raise
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return {
        "upload_id": extracted.content_hash,
        "name": extracted.name,
        "files": extracted.files,
        "bytes": extracted.unpacked_bytes,
        "reused": reused,
    }


def upload_path(upload_id: str) -> Path:
    path = _uploads_dir() / upload_id
    if not _UPLOAD_ID.match(upload_id) or not path.is_dir():
        raise RecordNotFound(
            f"no uploaded task {upload_id!r}: POST the archive to /tasks/upload first"
        )
    return path


def upload_name(upload_id: str) -> str:
    """The task's name at its first upload (folder name or task.toml name)."""
    sidecar = _uploads_dir() / f"{upload_id}.name"
    return sidecar.read_text().strip() if sidecar.is_file() else upload_id[:12]
