"""oddish.stored_files: a trial's output and a task's files, file by file (no services).

The legacy directory of an older record is read like storage: a link or a FIFO the agent left
there is no file, never a look through it; a task's archive is read as one stream."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from oddish.storage import ObjectNotFound
from oddish.storage.local import DirectoryView, LocalStorage
from oddish.stored_files import (
    CHUNK_SIZE,
    BadPath,
    ObjectFolder,
    TaskArchive,
    task_files,
    trajectory_path,
    trial_output,
)
from oddish.task_store import pack_task_dir

SECRET = b"SECRET-host-credential-91c3"
BAD_PATHS = ["../x", "a/../../x", "/etc/passwd", "a\\..\\b", "a//b", "", "a/", "a\x00b", "./a"]


def read(tree: ObjectFolder | TaskArchive, path: str) -> bytes:
    return b"".join(tree.open_file(path).chunks)


@pytest.fixture
def legacy_output(tmp_path: Path) -> Path:
    """A trial directory on disk as older records point at, with what a hostile agent plants."""
    secret = tmp_path / "host" / "credentials"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    out = tmp_path / "jobs" / "trial"
    (out / "agent").mkdir(parents=True)
    (out / "result.json").write_text('{"reward": 1}')
    (out / "agent" / "trajectory.json").write_text("{}")
    (out / "agent" / "stolen").symlink_to(secret)
    (out / "agent" / "host").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(out / "agent" / "pipe")
    return out


def test_a_legacy_directory_serves_regular_files_only(legacy_output: Path) -> None:
    output = trial_output(str(legacy_output))
    listing = output.list_files()
    assert [f.path for f in listing.files] == ["agent/trajectory.json", "result.json"]
    assert read(output, "result.json") == b'{"reward": 1}'
    for planted in ("agent/stolen", "agent/host/credentials", "agent/pipe"):
        with pytest.raises(ObjectNotFound):
            read(output, planted)
    for bad in BAD_PATHS:
        with pytest.raises(BadPath):
            output.open_file(bad)


def test_a_legacy_directory_is_read_only(legacy_output: Path) -> None:
    view = DirectoryView(legacy_output)
    with pytest.raises(Exception, match="read only"):
        view.put_bytes("x", b"y")
    with pytest.raises(Exception, match="read only"):
        view.delete_prefix("agent/")
    assert (legacy_output / "result.json").exists()


def test_stored_output_is_listed_with_sizes_and_cut_at_the_limit(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    prefix = "tasks/t/trials/r/attempt-1/"
    for i in range(5):
        storage.put_bytes(f"{prefix}f{i}.txt", b"x" * i)
    storage.put_bytes("tasks/t/trials/r/attempt-2/other.txt", b"not this attempt")
    output = trial_output(prefix, storage)
    whole = output.list_files()
    assert [(f.path, f.size) for f in whole.files] == [(f"f{i}.txt", i) for i in range(5)]
    assert whole.total_bytes == 10 and not whole.truncated
    cut = output.list_files(limit=3)
    assert len(cut.files) == 3 and cut.truncated
    with pytest.raises(ObjectNotFound):
        read(output, "other.txt")


def test_the_trajectory_is_found_where_agents_write_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    output = ObjectFolder(storage, "out/")
    assert trajectory_path(output) is None
    storage.put_bytes("out/verifier/trajectory.json", b"{}")  # not the agent's
    assert trajectory_path(output) is None
    storage.put_bytes("out/steps/b/agent/trajectory.json", b"{}")
    storage.put_bytes("out/steps/a/agent/trajectory.json", b"{}")
    assert trajectory_path(output) == "steps/a/agent/trajectory.json"
    storage.put_bytes("out/agent/trajectory.json", b"{}")
    assert trajectory_path(output) == "agent/trajectory.json"


def make_task(root: Path) -> Path:
    task = root / "task"
    (task / "tests").mkdir(parents=True)
    (task / "instruction.md").write_text("do it\n")
    (task / "tests" / "test.sh").write_text("#!/bin/sh\nexit 0\n")
    # Bigger than a few chunks and incompressible: the file comes out of the stream whole.
    (task / "tests" / "data.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 5))
    return task


def test_a_task_archive_is_listed_and_read_as_a_stream(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    packed = io.BytesIO()
    pack_task_dir(task, packed)
    storage.put_bytes("tasks/t/abc.tar.gz", packed.getvalue())
    files = task_files("tasks/t/abc.tar.gz", storage)
    listing = files.list_files()
    assert [(f.path, f.size) for f in listing.files] == [
        ("instruction.md", 6),
        ("tests/data.bin", 3 * CHUNK_SIZE + 5),
        ("tests/test.sh", 17),
    ]
    for rel in ("instruction.md", "tests/data.bin", "tests/test.sh"):
        opened = files.open_file(rel)
        assert opened.size == (task / rel).stat().st_size
        assert b"".join(opened.chunks) == (task / rel).read_bytes()
    with pytest.raises(ObjectNotFound):
        files.open_file("tests")  # a directory is no file
    with pytest.raises(ObjectNotFound):
        files.open_file("missing.md")
    for bad in BAD_PATHS:
        with pytest.raises(BadPath):
            files.open_file(bad)


def test_a_file_left_half_read_gives_its_stream_back(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    packed = io.BytesIO()
    pack_task_dir(task, packed)
    storage.put_bytes("tasks/t/abc.tar.gz", packed.getvalue())
    opened = TaskArchive(storage, "tasks/t/abc.tar.gz").open_file("tests/data.bin")
    first = next(opened.chunks)
    assert first == (task / "tests" / "data.bin").read_bytes()[: len(first)]
    opened.chunks.close()  # type: ignore[attr-defined]
    with pytest.raises(StopIteration):
        next(opened.chunks)


def test_a_legacy_task_directory_is_read_from_disk(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    (task / "link").symlink_to("/etc/passwd")
    files = task_files(str(task))
    assert "link" not in [f.path for f in files.list_files().files]
    with pytest.raises(ObjectNotFound):
        b"".join(files.open_file("link").chunks)
    assert b"".join(files.open_file("instruction.md").chunks) == b"do it\n"


def test_an_archive_that_is_not_gzip_is_an_error_not_a_hang(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("tasks/t/bad.tar.gz", b"not a gzip stream")
    with pytest.raises(tarfile.ReadError):
        TaskArchive(storage, "tasks/t/bad.tar.gz").list_files()
