"""oddish.api.uploads: the per-file bound of an upload, and unused uploads collected after
ODDISH_UPLOAD_RETENTION_SEC (no services needed)."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import EXAMPLES, task_archive
from oddish import queue
from oddish.api import uploads
from oddish.api.uploads import (
    StoredUpload,
    collect_old_uploads,
    collect_uploads_periodically,
    store_upload,
    stored_upload,
)
from oddish.archives import ArchiveError
from oddish.config import Settings, get_settings
from oddish.db.records import RecordNotFound
from oddish.task_cache import TaskCache, task_dir_for

HOUR = 3600.0
TASK = EXAMPLES / "hello-pass"


@pytest.fixture
def tasks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ODDISH_TASKS_DIR", str(tmp_path))
    monkeypatch.setenv("ODDISH_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("ODDISH_UPLOAD_RETENTION_SEC", str(HOUR))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last used ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def upload(data: bytes | None = None) -> dict:
    return store_upload(io.BytesIO(data or task_archive(TASK)))


def test_defaults_bound_each_file_below_the_whole_and_keep_uploads_a_day() -> None:
    defaults = Settings(_env_file=None)
    assert defaults.upload_max_file_bytes < defaults.upload_max_unpacked_bytes
    assert defaults.upload_retention_sec == 24 * HOUR


def test_an_upload_with_a_file_over_the_per_file_limit_is_refused(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODDISH_UPLOAD_MAX_FILE_BYTES", "1000")
    get_settings.cache_clear()
    big = task_archive(TASK, extra={"environment/data.bin": b"x" * 1001})
    with pytest.raises(ArchiveError) as info:
        upload(big)
    assert info.value.status_code == 413 and "per file" in str(info.value)
    assert not (tasks_dir / "uploads").exists()
    assert upload()["files"] >= 4  # the task's own files are all under the limit


def stored_files(tasks_dir: Path, upload_id: str) -> tuple[Path, Path]:
    """The upload's meta file (its mtime is its last use) and archive."""
    uploads_dir = tasks_dir / "uploads"
    return uploads_dir / f"{upload_id}.json", uploads_dir / f"{upload_id}.tar.gz"


def test_an_unused_upload_is_deleted_after_the_retention(tasks_dir: Path) -> None:
    stored = upload()
    meta, archive = stored_files(tasks_dir, stored["upload_id"])
    assert meta.is_file() and archive.is_file()
    assert stored_upload(stored["upload_id"]).name == stored["name"]

    assert collect_old_uploads() == 0, "fresh uploads stay"
    assert collect_old_uploads(now=time.time() + HOUR - 60) == 0
    assert collect_old_uploads(now=time.time() + HOUR + 60) == 1
    assert list((tasks_dir / "uploads").iterdir()) == [], "its archive goes with it"
    with pytest.raises(RecordNotFound):
        stored_upload(stored["upload_id"])
    # Uploading it again stores it again.
    assert upload()["reused"] is False and stored_upload(stored["upload_id"]).archive == archive


def test_each_use_restarts_the_retention(tasks_dir: Path) -> None:
    stored = upload()
    meta, archive = stored_files(tasks_dir, stored["upload_id"])

    age(meta, 2 * HOUR)
    stored_upload(stored["upload_id"])  # a sweep names it
    assert collect_old_uploads() == 0 and meta.is_file()

    age(meta, 2 * HOUR)
    assert upload()["reused"] is True  # uploaded again
    assert collect_old_uploads() == 0 and meta.is_file()

    age(meta, 2 * HOUR)
    assert collect_old_uploads() == 1 and not meta.exists() and not archive.exists()


async def test_tasks_created_from_an_upload_keep_their_own_copy(tasks_dir: Path) -> None:
    """No record points at an upload: a sweep copies it into the task's archive in storage."""
    stored = upload()
    archive = queue._pack_and_store(
        None, "task-gc", None, stored_upload(stored["upload_id"]).archive
    )
    age(stored_files(tasks_dir, stored["upload_id"])[0], 2 * HOUR)
    assert collect_old_uploads() == 1
    cache = TaskCache(tasks_dir / "cache", 1024**3)
    async with task_dir_for(archive.key, archive.sha256, cache=cache) as task_dir:
        assert (task_dir / "task.toml").is_file() and (task_dir / "tests" / "test.sh").is_file()


def test_an_upload_stored_by_an_earlier_version_is_used_and_collected(tasks_dir: Path) -> None:
    """Its files in a directory, its name beside them."""
    upload_id = "e" * 64
    path = tasks_dir / "uploads" / upload_id
    shutil.copytree(TASK, path)
    path.with_name(f"{upload_id}.name").write_text("hello-old\n")
    assert stored_upload(upload_id) == StoredUpload(name="hello-old", path=path)

    age(path, 2 * HOUR)
    stored_upload(upload_id)  # a sweep names it
    assert collect_old_uploads() == 0
    age(path, 2 * HOUR)
    assert collect_old_uploads() == 1
    assert list((tasks_dir / "uploads").iterdir()) == []


def test_leftovers_of_crashed_processes_are_deleted(
    tasks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "shm"
    monkeypatch.setattr(uploads, "SCRATCH_IN_MEMORY", scratch)
    stored = upload()
    incoming = tasks_dir / "incoming"
    stale = incoming / "upload-0123456789"
    (stale / "task" / "environment").mkdir(parents=True)
    stale_archive = incoming / "0123456789abcdef.tar.gz"
    stale_archive.write_bytes(b"half")
    fresh = incoming / "upload-fedcba9876"
    fresh.mkdir()
    stale_scratch = scratch / "oddish-upload-abc"
    (stale_scratch / "task").mkdir(parents=True)
    fresh_scratch = scratch / "oddish-upload-def"
    fresh_scratch.mkdir()
    not_ours = scratch / "someone-elses"
    not_ours.mkdir()
    for path in (stale, stale_archive, stale_scratch, not_ours):
        age(path, 2 * HOUR)
    uploads_dir = tasks_dir / "uploads"
    trash = uploads_dir / f".gc-{'b' * 64}.json-00000000"
    trash.write_text("{}")
    orphans = [uploads_dir / f"{'c' * 64}{suffix}" for suffix in (".name", ".tar.gz")]
    for orphan in orphans:
        orphan.write_text("gone")
        age(orphan, 2 * HOUR)
    not_an_upload = uploads_dir / "README"
    not_an_upload.write_text("kept")
    age(not_an_upload, 2 * HOUR)

    assert collect_old_uploads() == 0
    assert not stale.exists() and not stale_archive.exists() and not trash.exists()
    assert not stale_scratch.exists() and not any(orphan.exists() for orphan in orphans)
    assert fresh.is_dir() and fresh_scratch.is_dir() and not_ours.is_dir()
    assert not_an_upload.is_file()
    assert stored_upload(stored["upload_id"]).archive is not None


def test_an_upload_used_while_it_is_being_collected_is_put_back(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep may name the upload between the collector's look at its mtime and its rename."""
    stored = upload()
    meta, archive = stored_files(tasks_dir, stored["upload_id"])
    age(meta, 2 * HOUR)
    real_mtime = uploads._mtime
    looks: list[Path] = []

    def mtime_then_sweep(entry: Path) -> float | None:
        value = real_mtime(entry)
        if entry == meta and not looks:
            looks.append(entry)
            stored_upload(stored["upload_id"])  # the sweep, right after the look
        return value

    monkeypatch.setattr(uploads, "_mtime", mtime_then_sweep)
    assert collect_old_uploads() == 0
    assert meta.is_file() and archive.is_file()
    assert not [p for p in meta.parent.iterdir() if p.name.startswith(".gc-")]


def test_two_collectors_at_once_delete_each_upload_once(tasks_dir: Path) -> None:
    stored = upload()
    age(stored_files(tasks_dir, stored["upload_id"])[0], 2 * HOUR)

    async def both() -> list[int]:
        return list(
            await asyncio.gather(
                asyncio.to_thread(collect_old_uploads), asyncio.to_thread(collect_old_uploads)
            )
        )

    assert sorted(asyncio.run(both())) == [0, 1]


async def test_the_periodic_collector_runs_until_stopped(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[float] = []

    def collect(now: float | None = None) -> int:
        rounds.append(time.monotonic())
        if len(rounds) == 2:
            raise OSError("disk trouble")  # logged; the next round still comes
        return 0

    monkeypatch.setattr(uploads, "collect_old_uploads", collect)
    stop = asyncio.Event()
    task = asyncio.create_task(collect_uploads_periodically(stop, interval_sec=0.05))
    while len(rounds) < 4:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    assert len(rounds) >= 4
