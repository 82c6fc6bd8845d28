"""oddish.api.uploads: the per-file bound of an upload, and unused uploads collected after
ODDISH_UPLOAD_RETENTION_SEC (no services needed)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import EXAMPLES, task_archive
from oddish.api import uploads
from oddish.api.uploads import (
    collect_old_uploads,
    collect_uploads_periodically,
    store_upload,
    upload_name,
    upload_path,
)
from oddish.archives import ArchiveError
from oddish.config import Settings, get_settings
from oddish.db.records import RecordNotFound
from oddish.storage.local import LocalStorage
from oddish.task_cache import TaskCache, task_dir_for
from oddish.task_store import store_task_archive

HOUR = 3600.0
TASK = EXAMPLES / "hello-pass"


@pytest.fixture
def tasks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ODDISH_TASKS_DIR", str(tmp_path))
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


def test_an_unused_upload_is_deleted_after_the_retention(tasks_dir: Path) -> None:
    stored = upload()
    path = upload_path(stored["upload_id"])
    assert (tasks_dir / "uploads" / f"{stored['upload_id']}.name").is_file()
    assert upload_name(stored["upload_id"]) == stored["name"]

    assert collect_old_uploads() == 0, "fresh uploads stay"
    assert collect_old_uploads(now=time.time() + HOUR - 60) == 0
    assert collect_old_uploads(now=time.time() + HOUR + 60) == 1
    assert not path.exists()
    assert list((tasks_dir / "uploads").iterdir()) == [], "its name file goes with it"
    with pytest.raises(RecordNotFound):
        upload_path(stored["upload_id"])
    # Uploading it again stores it again.
    assert upload()["reused"] is False and upload_path(stored["upload_id"]).is_dir()


def test_each_use_restarts_the_retention(tasks_dir: Path) -> None:
    stored = upload()
    path = tasks_dir / "uploads" / stored["upload_id"]

    age(path, 2 * HOUR)
    upload_path(stored["upload_id"])  # a sweep names it
    assert collect_old_uploads() == 0 and path.is_dir()

    age(path, 2 * HOUR)
    assert upload()["reused"] is True  # uploaded again
    assert collect_old_uploads() == 0 and path.is_dir()

    age(path, 2 * HOUR)
    assert collect_old_uploads() == 1 and not path.exists()


async def test_tasks_created_from_an_upload_keep_their_own_copy(tasks_dir: Path) -> None:
    """No record points at an upload: a sweep copies it into the task's archive in storage."""
    stored = upload()
    storage = LocalStorage(tasks_dir / "store")
    archive = store_task_archive(upload_path(stored["upload_id"]), "task-gc", storage=storage)
    age(tasks_dir / "uploads" / stored["upload_id"], 2 * HOUR)
    assert collect_old_uploads() == 1
    cache = TaskCache(tasks_dir / "cache", 1024**3, storage=storage)
    async with task_dir_for(archive.key, archive.sha256, cache=cache) as task_dir:
        assert (task_dir / "task.toml").is_file() and (task_dir / "tests" / "test.sh").is_file()


def test_leftovers_of_crashed_processes_are_deleted(tasks_dir: Path) -> None:
    stored = upload()
    incoming = tasks_dir / "incoming"
    stale = incoming / "0123456789abcdef"
    (stale / "environment").mkdir(parents=True)
    staging = incoming / ".feedfacefeedface.upload-x1"
    (staging / "root").mkdir(parents=True)
    fresh = incoming / "fedcba9876543210"
    fresh.mkdir()
    for path in (stale, staging):
        age(path, 2 * HOUR)
    uploads_dir = tasks_dir / "uploads"
    trash = uploads_dir / f".gc-{'b' * 64}-00000000"
    (trash / "tests").mkdir(parents=True)
    orphan = uploads_dir / f"{'c' * 64}.name"
    orphan.write_text("gone")
    age(orphan, 2 * HOUR)
    not_an_upload = uploads_dir / "README"
    not_an_upload.write_text("kept")
    age(not_an_upload, 2 * HOUR)

    assert collect_old_uploads() == 0
    assert not stale.exists() and not staging.exists() and not trash.exists()
    assert not orphan.exists()
    assert fresh.is_dir() and not_an_upload.is_file()
    assert upload_path(stored["upload_id"]).is_dir()


def test_an_upload_used_while_it_is_being_collected_is_put_back(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep may name the upload between the collector's look at its mtime and its rename."""
    stored = upload()
    path = tasks_dir / "uploads" / stored["upload_id"]
    age(path, 2 * HOUR)
    real_mtime = uploads._mtime
    looks: list[Path] = []

    def mtime_then_sweep(entry: Path) -> float | None:
        value = real_mtime(entry)
        if entry == path and not looks:
            looks.append(entry)
            upload_path(stored["upload_id"])  # the sweep, right after the look
        return value

    monkeypatch.setattr(uploads, "_mtime", mtime_then_sweep)
    assert collect_old_uploads() == 0
    assert path.is_dir() and (path / "task.toml").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".gc-")]


def test_two_collectors_at_once_delete_each_upload_once(tasks_dir: Path) -> None:
    stored = upload()
    age(tasks_dir / "uploads" / stored["upload_id"], 2 * HOUR)

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
