"""An upload is checked and packed once: each sweep of it copies its archive and reads its check
instead of loading and packing the task again, with the same outcome (no services needed)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from helpers import EXAMPLES, task_archive, task_archive_without
from oddish import queue, task_check
from oddish.api import uploads
from oddish.api.uploads import store_upload, stored_upload
from oddish.archives import ArchiveError
from oddish.config import get_settings
from oddish.db.records import RecordNotFound
from oddish.request_bodies import SweepRequest
from oddish.storage.local import LocalStorage
from oddish.task_cache import TaskCache, task_dir_for
from oddish.task_store import pack_task_dir, store_task_archive

TASK = EXAMPLES / "hello-pass"


@pytest.fixture
def tasks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ODDISH_TASKS_DIR", str(tmp_path / "tasks"))
    monkeypatch.setenv("ODDISH_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.delenv("ODDISH_AGENT_ENV_ALLOWLIST", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "tasks"
    get_settings.cache_clear()


def sweep(*, disable_verification: bool = False) -> SweepRequest:
    return SweepRequest.model_validate(
        {
            "upload_id": "u",
            "configs": [{"agent": "oracle"}],
            "harbor": {"verifier": {"disable": disable_verification}},
        }
    )


def harbor_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, loading a task with Harbor fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the task was loaded again")

    monkeypatch.setattr(task_check, "Task", refuse)


def test_a_sweep_stores_the_uploads_archive_without_loading_or_packing_the_task(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = stored_upload(store_upload(io.BytesIO(task_archive(TASK)))["upload_id"])
    assert upload.check is not None and upload.check.problem is None
    assert upload.archive is not None

    harbor_unreachable(monkeypatch)
    monkeypatch.setattr(queue, "pack_task_dir", None)  # packing again would fail too
    submission = sweep().submission(
        upload.path, upload.name, checked=upload.check, packed=upload.archive
    )
    stored = queue._pack_and_store(submission.task_path, "task-a", None, submission.packed)

    # The same bytes as the task's own files packed afresh.
    fresh = store_task_archive(TASK, "task-b", storage=LocalStorage(tasks_dir / "other"))
    assert stored.sha256 == fresh.sha256
    packed = io.BytesIO()
    pack_task_dir(TASK, packed)
    assert upload.archive.read_bytes() == packed.getvalue()


def test_a_task_without_tests_is_refused_at_the_sweep_unless_verification_is_off(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = store_upload(io.BytesIO(task_archive_without(TASK, "tests")))
    upload = stored_upload(answer["upload_id"])
    assert upload.check is not None and upload.check.problem is not None
    harbor_unreachable(monkeypatch)

    with pytest.raises(ValidationError, match="test"):
        sweep().submission(upload.path, upload.name, checked=upload.check, packed=upload.archive)
    submission = sweep(disable_verification=True).submission(
        upload.path, upload.name, checked=upload.check, packed=upload.archive
    )
    assert submission.checked == upload.check


def test_the_task_toml_env_tables_are_held_to_the_allow_list_of_the_sweep(
    tasks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the task's env tables may refer to is a setting: changed after the upload, the
    sweep follows the new one."""
    task = tmp_path / "hello"
    shutil.copytree(TASK, task)
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("\n[", '\n[verifier.env]\nK = "${MY_KEY}"\n\n[', 1))
    upload = stored_upload(store_upload(io.BytesIO(task_archive(task)))["upload_id"])
    harbor_unreachable(monkeypatch)

    with pytest.raises(ValidationError, match=r"task\.toml verifier\.env K=\$\{MY_KEY\}"):
        sweep().submission(upload.path, upload.name, checked=upload.check, packed=upload.archive)
    monkeypatch.setenv("ODDISH_AGENT_ENV_ALLOWLIST", "MY_KEY")
    get_settings.cache_clear()
    sweep().submission(upload.path, upload.name, checked=upload.check, packed=upload.archive)


def test_an_unreadable_upload_is_not_found(tasks_dir: Path) -> None:
    upload_id = store_upload(io.BytesIO(task_archive(TASK)))["upload_id"]
    (tasks_dir / "uploads" / f"{upload_id}.json").write_text("{not json")
    with pytest.raises(RecordNotFound):
        stored_upload(upload_id)
    # Uploaded again, it is stored again.
    assert store_upload(io.BytesIO(task_archive(TASK)))["reused"] is True
    (tasks_dir / "uploads" / f"{upload_id}.tar.gz").unlink()
    with pytest.raises(RecordNotFound):
        stored_upload(upload_id)
    assert store_upload(io.BytesIO(task_archive(TASK)))["reused"] is False
    assert stored_upload(upload_id).archive is not None


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The scratch directory in memory, here a plain one."""
    place = tmp_path / "shm"
    place.mkdir()
    monkeypatch.setattr(uploads, "SCRATCH_IN_MEMORY", place)
    return place


def test_an_upload_is_unpacked_in_memory_and_nothing_stays_there(
    tasks_dir: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []
    real_check = uploads.check_task_dir

    def check(task_dir: Path) -> task_check.TaskCheck:
        seen.append(task_dir)
        return real_check(task_dir)

    monkeypatch.setattr(uploads, "check_task_dir", check)
    store_upload(io.BytesIO(task_archive(TASK)))
    with pytest.raises(ArchiveError):
        store_upload(io.BytesIO(task_archive_without(TASK, "instruction.md")))
    assert [path.is_relative_to(scratch) for path in seen] == [True, True]
    assert list(scratch.iterdir()) == []
    assert list((tasks_dir / "incoming").iterdir()) == []


def test_an_upload_too_large_for_memory_is_unpacked_on_disk(
    tasks_dir: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "SCRATCH_IN_MEMORY_MAX_BYTES", 1000)
    big = task_archive(TASK, extra={"environment/data.bin": b"x" * 5000})
    answer = store_upload(io.BytesIO(big))
    assert answer["bytes"] > 5000
    upload = stored_upload(answer["upload_id"])
    assert upload.archive is not None and upload.check is not None
    assert list(scratch.iterdir()) == []

    # Beyond the server's own limit it is refused, as it always was.
    monkeypatch.setenv("ODDISH_UPLOAD_MAX_UNPACKED_BYTES", "3000")
    get_settings.cache_clear()
    with pytest.raises(ArchiveError) as info:
        store_upload(io.BytesIO(big))
    assert info.value.status_code == 413 and "3000" in str(info.value)


async def test_a_sweep_with_a_docker_image_rewrites_the_uploaded_task(tasks_dir: Path) -> None:
    upload = stored_upload(store_upload(io.BytesIO(task_archive(TASK)))["upload_id"])
    assert upload.archive is not None
    stored = queue._pack_and_store(None, "task-img", "registry.example/hello:1", upload.archive)
    cache = TaskCache(tasks_dir / "cache", 1024**3)
    async with task_dir_for(stored.key, stored.sha256, cache=cache) as task_dir:
        assert 'docker_image = "registry.example/hello:1"' in (task_dir / "task.toml").read_text()
        assert (task_dir / "tests" / "test.sh").read_bytes() == (
            TASK / "tests" / "test.sh"
        ).read_bytes()
