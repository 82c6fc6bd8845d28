"""oddish.task_cache and the task archives of oddish.task_store, on a LocalStorage in tmp_path:
submissions packed deterministically, fetched once per worker, checked against their sha256,
kept within a size bound without evicting what a trial uses (no services needed)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

from oddish.archives import ArchiveError
from oddish.storage import ObjectInfo, StorageUnavailable
from oddish.storage.local import LocalStorage
from oddish.task_cache import WORK, TaskArchiveCorrupt, TaskCache, task_dir_for
from oddish.task_store import (
    StoredArchive,
    is_legacy_location,
    pack_task_dir,
    store_task_archive,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks"
HELLO = EXAMPLES / "hello-pass"
GIB = 1024**3


class CountingStorage(LocalStorage):
    """A LocalStorage that counts downloads, each taking a while (so that fetches overlap), and
    can be made unavailable."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        super().__init__(root)
        self.delay = delay
        self.downloads: list[str] = []
        self.unavailable = False
        self._lock = threading.Lock()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        if self.unavailable:
            raise StorageUnavailable("the store is down (test)")
        with self._lock:
            self.downloads.append(key)
        time.sleep(self.delay)
        return super().get_file(key, path)


@pytest.fixture
def storage(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "store")


def cache(tmp_path: Path, storage: LocalStorage, max_bytes: int = GIB, name: str = "cache"):
    return TaskCache(tmp_path / name, max_bytes, storage=storage)


def task_with(tmp_path: Path, name: str, payload: bytes) -> Path:
    """hello-pass with one more file, so that each task has its own archive and size."""
    task = tmp_path / "sources" / name
    shutil.copytree(HELLO, task)
    (task / "environment" / "payload.bin").write_bytes(payload)
    return task


def tree(path: Path) -> dict[str, tuple[bytes, bool]]:
    """Each file's bytes and whether it is executable, by relative path."""
    return {
        str(p.relative_to(path)): (p.read_bytes(), bool(p.stat().st_mode & 0o111))
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def store(storage: LocalStorage, source: Path, task_id: str = "task-1", **kw) -> StoredArchive:
    return store_task_archive(source, task_id, storage=storage, **kw)


async def test_a_stored_task_is_fetched_from_storage_and_unpacked(
    tmp_path: Path, storage: CountingStorage
) -> None:
    stored = store(storage, HELLO, docker_image="python:3.12-slim")
    assert stored.key == f"tasks/task-1/{stored.sha256}.tar.gz"
    assert not is_legacy_location(stored.key)
    blob = b"".join(storage.iter_bytes(stored.key))
    assert hashlib.sha256(blob).hexdigest() == stored.sha256 and len(blob) == stored.size

    task_cache = cache(tmp_path, storage)
    async with task_dir_for(stored.key, stored.sha256, cache=task_cache) as task_dir:
        assert task_dir == tmp_path / "cache" / stored.sha256
        assert task_cache.in_use(stored.sha256) == 1
        fetched = tree(task_dir)
        original = tree(HELLO)
        assert fetched.keys() == original.keys()
        for name, (data, executable) in original.items():
            if name != "task.toml":
                assert fetched[name] == (data, executable), name
        # The submission's docker image, written into the stored copy.
        assert 'docker_image = "python:3.12-slim"' in (task_dir / "task.toml").read_text()
    assert task_cache.in_use(stored.sha256) == 0
    assert list((tmp_path / "cache" / WORK).iterdir()) == [], "no download left behind"

    # Fetched once: the next trial uses the cached copy.
    async with task_dir_for(stored.key, stored.sha256, cache=task_cache) as again:
        assert again == task_dir
    assert storage.downloads == [stored.key]


def test_archives_are_deterministic_and_refuse_links(tmp_path: Path) -> None:
    first = io.BytesIO()
    pack_task_dir(HELLO, first)
    copy = tmp_path / "copy"
    shutil.copytree(HELLO, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1, 1))  # other times, same files
    second = io.BytesIO()
    pack_task_dir(copy, second)
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue()), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}

    (copy / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError, match="'link' in the task is a symbolic link"):
        pack_task_dir(copy, io.BytesIO())


def test_a_failed_submission_stores_nothing(
    tmp_path: Path, storage: CountingStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    broken = tmp_path / "broken"
    shutil.copytree(HELLO, broken)
    (broken / "dangling").symlink_to(tmp_path / "nowhere")  # copytree cannot follow it
    with pytest.raises(shutil.Error):
        store(storage, broken)
    assert list(storage.list("")) == [] and list(temp.iterdir()) == []

    # Links are followed by the copy (as before archives): the archive holds their content.
    linked = tmp_path / "linked"
    shutil.copytree(HELLO, linked)
    (tmp_path / "outside.txt").write_text("content")
    (linked / "inside.txt").symlink_to(tmp_path / "outside.txt")
    stored = store(storage, linked)
    with tarfile.open(fileobj=io.BytesIO(b"".join(storage.iter_bytes(stored.key)))) as tar:
        member = tar.getmember("inside.txt")
        assert member.isreg() and member.size == len("content")
    assert list(temp.iterdir()) == []


async def test_a_sha256_mismatch_is_refused_and_discarded(
    tmp_path: Path, storage: CountingStorage
) -> None:
    stored = store(storage, HELLO)
    other = store(storage, task_with(tmp_path, "other", b"x"), task_id="task-2")
    # The object replaced behind the record's back (a corrupted or tampered store).
    storage.put_bytes(stored.key, b"".join(storage.iter_bytes(other.key)))
    task_cache = cache(tmp_path, storage)
    with pytest.raises(TaskArchiveCorrupt, match=f"not the {stored.sha256} recorded"):
        async with task_dir_for(stored.key, stored.sha256, cache=task_cache):
            pass
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [WORK]
    assert list((tmp_path / "cache" / WORK).iterdir()) == []
    assert task_cache.in_use(stored.sha256) == 0

    # A sha256 that is no sha256 never becomes a path.
    with pytest.raises(ValueError, match="no valid sha256"):
        async with task_dir_for(stored.key, "../../etc", cache=task_cache):
            pass


async def test_storage_unavailable_is_raised_and_the_next_fetch_works(
    tmp_path: Path, storage: CountingStorage
) -> None:
    stored = store(storage, HELLO)
    task_cache = cache(tmp_path, storage)
    storage.unavailable = True
    with pytest.raises(StorageUnavailable):
        async with task_dir_for(stored.key, stored.sha256, cache=task_cache):
            pass
    storage.unavailable = False
    async with task_dir_for(stored.key, stored.sha256, cache=task_cache) as task_dir:
        assert (task_dir / "task.toml").is_file()


async def test_concurrent_fetches_of_one_archive_download_it_once(tmp_path: Path) -> None:
    storage = CountingStorage(tmp_path / "store", delay=0.3)
    stored = store(storage, HELLO)
    task_cache = cache(tmp_path, storage)
    held: list[Path] = []
    release = asyncio.Event()

    async def trial() -> None:
        async with task_dir_for(stored.key, stored.sha256, cache=task_cache) as task_dir:
            held.append(task_dir)
            await release.wait()

    trials = [asyncio.create_task(trial()) for _ in range(6)]
    while len(held) < 6:
        await asyncio.sleep(0.01)
    assert storage.downloads == [stored.key], "one download for six trials"
    assert set(held) == {tmp_path / "cache" / stored.sha256}
    assert task_cache.in_use(stored.sha256) == 6
    release.set()
    await asyncio.gather(*trials)
    assert task_cache.in_use(stored.sha256) == 0


async def test_two_processes_sharing_a_cache_keep_one_copy(tmp_path: Path) -> None:
    """Two caches on one directory (as two workers on one machine): both may download, the
    first rename wins, and both use that one copy."""
    storage = CountingStorage(tmp_path / "store", delay=0.3)
    stored = store(storage, HELLO)
    one, two = cache(tmp_path, storage), cache(tmp_path, storage)

    async def use(task_cache: TaskCache) -> Path:
        async with task_dir_for(stored.key, stored.sha256, cache=task_cache) as task_dir:
            assert (task_dir / "task.toml").is_file()
            return task_dir

    first, second = await asyncio.gather(use(one), use(two))
    assert first == second == tmp_path / "cache" / stored.sha256
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [WORK, stored.sha256]
    assert list((tmp_path / "cache" / WORK).iterdir()) == []


def entry_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cached(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "cache").iterdir() if p.name != WORK}


async def test_least_recently_used_entries_go_past_the_size_bound(
    tmp_path: Path, storage: CountingStorage
) -> None:
    archives = {
        name: store(storage, task_with(tmp_path, name, os.urandom(100_000)), task_id=name)
        for name in ("a", "b", "c")
    }
    sha = {name: stored.sha256 for name, stored in archives.items()}
    probe = cache(tmp_path, storage, name="probe")
    async with task_dir_for(archives["a"].key, sha["a"], cache=probe) as task_dir:
        size = entry_bytes(task_dir)
    # Room for two tasks, not three.
    task_cache = cache(tmp_path, storage, max_bytes=2 * size + size // 2)
    for name in ("a", "b"):
        async with task_dir_for(archives[name].key, sha[name], cache=task_cache):
            pass
    # a used again after b: b is the least recently used.
    root = tmp_path / "cache"
    os.utime(root / sha["a"], (2_000_000_000, 2_000_000_000))
    os.utime(root / sha["b"], (1_000_000_000, 1_000_000_000))
    async with task_dir_for(archives["c"].key, sha["c"], cache=task_cache):
        assert cached(tmp_path) == {sha["a"], sha["c"]}
    assert entry_bytes(root) <= task_cache.max_bytes

    # b again: a is now the least recently used (c was just used), and goes.
    os.utime(root / sha["a"], (1_000_000_000, 1_000_000_000))
    async with task_dir_for(archives["b"].key, sha["b"], cache=task_cache):
        pass
    assert cached(tmp_path) == {sha["b"], sha["c"]}


async def test_an_entry_in_use_is_never_evicted(tmp_path: Path, storage: CountingStorage) -> None:
    archives = {
        name: store(storage, task_with(tmp_path, name, os.urandom(10_000)), task_id=name)
        for name in ("a", "b", "c", "d")
    }
    sha = {name: stored.sha256 for name, stored in archives.items()}
    # Over the bound with any one entry: only entries in use stay.
    task_cache = cache(tmp_path, storage, max_bytes=1)
    root = tmp_path / "cache"

    def fetch(name: str, task_cache: TaskCache = task_cache):
        return task_dir_for(archives[name].key, sha[name], cache=task_cache)

    async with fetch("a"):
        os.utime(root / sha["a"], (1, 1))  # the oldest, but running
        async with fetch("b"):
            assert cached(tmp_path) == {sha["a"], sha["b"]}, "both in use, over the bound"
        async with fetch("c"):
            assert cached(tmp_path) == {sha["a"], sha["c"]}, "b was free: evicted; a runs"
        assert task_cache.in_use(sha["a"]) == 1
        assert (root / sha["a"] / "task.toml").is_file()

    # An entry another process (another cache on the directory) uses is not evicted either.
    other = cache(tmp_path, storage, max_bytes=1)
    async with fetch("a", other):
        os.utime(root / sha["a"], (1, 1))
        async with fetch("d"):
            assert sha["a"] in cached(tmp_path), "held by the other process"
            assert sha["c"] not in cached(tmp_path)
    async with fetch("b"):
        assert cached(tmp_path) == {sha["b"]}, "nothing in use any more: only the newest stays"


async def test_a_legacy_local_path_is_returned_unchanged(tmp_path: Path) -> None:
    legacy = str(tmp_path / "tasks" / "task-old")
    assert is_legacy_location(legacy)
    task_cache = cache(tmp_path, CountingStorage(tmp_path / "store"))
    async with task_dir_for(legacy, None, cache=task_cache) as task_dir:
        assert task_dir == Path(legacy)
    assert not (tmp_path / "cache").exists(), "the cache is not involved"
