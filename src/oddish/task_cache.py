"""Each worker's local copies of the task archives it runs, unpacked and keyed by content.

A task's location is the storage key of its archive (``oddish.task_store``); Harbor needs a
directory. :func:`task_dir_for` gives one for the time a trial runs::

    async with task_dir_for(task.task_path, task.archive_sha256) as task_dir:
        ...  # run Harbor on task_dir

- A legacy location (an absolute path: a task stored before archives went to storage) is
  returned as it is, read from disk as before.
- Otherwise the archive is looked up in the cache directory (``ODDISH_TASK_CACHE_DIR``, default
  ``<ODDISH_HOME>/task-cache``) under its sha256: ``<cache>/<sha256>/`` is the unpacked task.
  Missing, it is downloaded into ``<cache>/.work/`` (same file system), its sha256 checked (a
  mismatch discards it: :class:`TaskArchiveCorrupt`), unpacked by the same safe extractor as
  uploads (``oddish.archives``) and renamed into place at once: an entry is whole or absent.
- Trials of one process share one copy: a lock per sha256 makes the second wait for the first
  download instead of starting its own. Processes sharing a cache directory each download, and
  the first rename wins (the others discard their identical copy).
- The cache is bounded: once it holds more than ``ODDISH_TASK_CACHE_MAX_BYTES`` (unpacked bytes
  of its entries), least recently used entries (by their directory's mtime, touched at each use)
  are deleted, never one in use. This process counts the trials using each entry; while one
  does, it also holds a shared ``flock`` on the entry's directory, and eviction takes an
  exclusive one without waiting, so an entry used by another process sharing the directory is
  not evicted either.

Fetching fails with a :class:`~oddish.storage.StorageError` (the store unavailable, the archive
missing or corrupt): an infrastructure failure of the attempt, which Temporal retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from oddish.archives import extract_task_archive
from oddish.config import Settings, get_settings
from oddish.storage import BaseStorage, StorageError, get_storage
from oddish.task_store import file_sha256, is_legacy_location

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
WORK = ".work"
# What is left in .work this long (by a process that died mid-download) is removed.
STALE_WORK_SEC = 24 * 3600.0
# The archive's bytes are checked against the recorded sha256 before unpacking: these bounds only
# keep a broken archive from filling the disk.
EXTRACT_MAX_BYTES = 1 << 40
EXTRACT_MAX_MEMBERS = 1_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TaskArchiveCorrupt(StorageError):
    """The downloaded archive's sha256 is not the one recorded at submission."""


def _check_sha256(sha256: str | None, location: str) -> str:
    if sha256 is None or not _SHA256.match(sha256):
        # The record is wrong, not the store: another attempt would fail the same way.
        raise ValueError(f"task archive {location!r} has no valid sha256 recorded ({sha256!r})")
    return sha256


def _tree_bytes(path: Path) -> int:
    """Bytes of the regular files below ``path`` (links not followed)."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


class TaskCache:
    """Unpacked task archives under ``root``, at most ``max_bytes`` of them when not in use."""

    def __init__(self, root: Path, max_bytes: int, storage: BaseStorage | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._storage = storage
        # One download per archive at a time in this process.
        self._fetching: dict[str, asyncio.Lock] = {}
        # Guards the counts and held descriptors (touched from threads) and serialises eviction.
        self._mutex = threading.Lock()
        self._in_use: dict[str, int] = {}
        self._held: dict[str, int] = {}
        # Unpacked bytes of each entry; an entry's content never changes.
        self._sizes: dict[str, int] = {}

    @property
    def storage(self) -> BaseStorage:
        return self._storage or get_storage()

    def entry_path(self, sha256: str) -> Path:
        return self.root / sha256

    def in_use(self, sha256: str) -> int:
        """How many trials of this process use the entry."""
        with self._mutex:
            return self._in_use.get(sha256, 0)

    # --- using an entry ------------------------------------------------------------------------

    async def acquire(self, location: str, sha256: str | None) -> Path:
        """The unpacked archive stored under ``location`` with that sha256, fetched unless cached,
        marked in use until :meth:`release`."""
        sha = _check_sha256(sha256, location)
        lock = self._fetching.setdefault(sha, asyncio.Lock())
        for _ in range(3):
            async with lock:
                if self._hold_again(sha) or await self._hold_uncancelled(sha):
                    return self.entry_path(sha)
                await asyncio.to_thread(self._fetch, location, sha)
            # Placed: hold it (evicted at once by another process, it is fetched again).
            if await self._hold_uncancelled(sha):
                await asyncio.to_thread(self.evict)
                return self.entry_path(sha)
        raise StorageError(f"task archive {location!r}: its cache entry kept disappearing")

    def release(self, sha256: str) -> None:
        """One trial less uses the entry; with none left, this process's lock on it goes."""
        with self._mutex:
            count = self._in_use.get(sha256, 0) - 1
            if count > 0:
                self._in_use[sha256] = count
                return
            self._in_use.pop(sha256, None)
            fd = self._held.pop(sha256, None)
        if fd is not None:
            os.close(fd)  # releases the shared flock

    async def _hold_uncancelled(self, sha: str) -> bool:
        """:meth:`_hold` in a thread; cancelled meanwhile, a hold it took is given back."""
        holding = asyncio.ensure_future(asyncio.to_thread(self._hold, sha))
        try:
            return await asyncio.shield(holding)
        except asyncio.CancelledError:
            await asyncio.wait({holding})
            if not holding.cancelled() and holding.exception() is None and holding.result():
                self.release(sha)
            raise

    def _hold_again(self, sha: str) -> bool:
        """:meth:`_hold` when this process holds the entry already (most trials: their task's
        other trials run here), on the event loop: a thread hop waits behind the trials' own
        work on a busy worker. False when it does not, or when the mutex is busy."""
        if not self._mutex.acquire(blocking=False):
            return False
        try:
            return self._count_one_more(sha)
        finally:
            self._mutex.release()

    def _count_one_more(self, sha: str) -> bool:
        """With the mutex held: one trial more uses an entry this process holds already (its
        mtime touched); False when the process does not hold it."""
        if not self._in_use.get(sha):
            return False
        self._in_use[sha] += 1
        self._touch(self._held[sha])
        return True

    def _hold(self, sha: str) -> bool:
        """Mark the entry in use if it is in place (False if not): a shared flock on its
        directory, taken once per process, and its mtime touched (its last use)."""
        with self._mutex:
            if self._count_one_more(sha):
                return True
            path = self.entry_path(sha)
            try:
                fd = os.open(path, _DIR_FLAGS)
            except (FileNotFoundError, NotADirectoryError):
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                # Evicted between the open and the lock: that directory is no longer the entry.
                if not _same_inode(path, fd):
                    os.close(fd)
                    return False
            except BaseException:
                os.close(fd)
                raise
            self._in_use[sha] = 1
            self._held[sha] = fd
            self._touch(fd)
            return True

    @staticmethod
    def _touch(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.utime(fd)

    # --- fetching ------------------------------------------------------------------------------

    def _fetch(self, location: str, sha: str) -> None:
        """Download, check and unpack the archive, and rename it into place (blocking)."""
        work = self.root / WORK
        work.mkdir(parents=True, exist_ok=True)
        stage = work / f"{sha[:16]}-{secrets.token_hex(6)}"
        stage.mkdir()
        began = time.monotonic()
        try:
            archive = stage / "archive.tar.gz"
            info = self.storage.get_file(location, archive)
            actual = file_sha256(archive)
            if actual != sha:
                raise TaskArchiveCorrupt(
                    f"task archive {location!r}: downloaded {info.size} bytes with sha256 "
                    f"{actual}, not the {sha} recorded at submission; discarded"
                )
            unpacked = stage / "task"
            extracted = extract_task_archive(
                archive,
                unpacked,
                max_archive_bytes=max(info.size, 1),
                max_unpacked_bytes=EXTRACT_MAX_BYTES,
                max_members=EXTRACT_MAX_MEMBERS,
            )
            try:
                os.rename(unpacked, self.entry_path(sha))
            except OSError as exc:
                # Another process put the same archive in place first: its copy is as good.
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            else:
                with self._mutex:
                    self._sizes[sha] = extracted.unpacked_bytes
            log.info(
                "task cache: fetched %s (%d bytes, %d files unpacked) in %.1fs",
                location,
                info.size,
                extracted.files,
                time.monotonic() - began,
            )
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    # --- eviction ------------------------------------------------------------------------------

    def evict(self) -> list[str]:
        """Delete least recently used entries no trial uses until the cache holds at most
        ``max_bytes``; the sha256s deleted. Leftovers of dead downloads go too."""
        trash: list[Path] = []
        evicted: list[str] = []
        with self._mutex:
            entries = self._entries()
            total = sum(size for _, _, size in entries)
            for _mtime, sha, size in entries:
                if total <= self.max_bytes:
                    break
                if self._in_use.get(sha):
                    continue
                moved = self._take_out(sha)
                if moved is None:
                    continue  # in use by another process, or gone
                trash.append(moved)
                evicted.append(sha)
                self._sizes.pop(sha, None)
                total -= size
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)
        self._collect_stale_work()
        if evicted:
            log.info("task cache: evicted %d entries, %d bytes left", len(evicted), total)
        return evicted

    def _entries(self) -> list[tuple[float, str, int]]:
        """(mtime, sha256, unpacked bytes) of every entry, least recently used first."""
        found: list[tuple[float, str, int]] = []
        try:
            scan = list(os.scandir(self.root))
        except FileNotFoundError:
            return found
        for entry in scan:
            if not _SHA256.match(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            size = self._sizes.get(entry.name)
            if size is None:
                size = self._sizes[entry.name] = _tree_bytes(Path(entry.path))
            found.append((st.st_mtime, entry.name, size))
        found.sort()
        return found

    def _take_out(self, sha: str) -> Path | None:
        """Rename the entry out of the cache unless another process holds it; where it went."""
        path = self.entry_path(sha)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            if not _same_inode(path, fd):
                return None
            work = self.root / WORK
            work.mkdir(exist_ok=True)
            moved = work / f"evicted-{sha[:16]}-{secrets.token_hex(6)}"
            try:
                os.rename(path, moved)
            except OSError:
                return None
            return moved
        finally:
            os.close(fd)

    def _collect_stale_work(self) -> None:
        cutoff = time.time() - STALE_WORK_SEC
        try:
            scan = list(os.scandir(self.root / WORK))
        except FileNotFoundError:
            return
        for entry in scan:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


def _same_inode(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


_lock = threading.Lock()
# The process's cache and the settings object it was built from.
_cached: tuple[Settings, TaskCache] | None = None


def cache_from_settings(settings: Settings) -> TaskCache:
    return TaskCache(
        settings.task_cache_dir or settings.home / "task-cache", settings.task_cache_max_bytes
    )


def get_task_cache() -> TaskCache:
    """The process's cache, kept while ``get_settings()`` is the same object."""
    global _cached
    current = get_settings()
    with _lock:
        if _cached is None or _cached[0] is not current:
            _cached = (current, cache_from_settings(current))
        return _cached[1]


@contextlib.asynccontextmanager
async def task_dir_for(
    location: str, sha256: str | None, *, cache: TaskCache | None = None
) -> AsyncIterator[Path]:
    """The local directory of the task at ``location`` while the block runs: a legacy absolute
    path as it is; a storage key's archive from the cache (``cache``, default the process's),
    fetched when missing and in use until the block ends."""
    if is_legacy_location(location):
        yield Path(location)
        return
    cache = cache or get_task_cache()
    path = await cache.acquire(location, sha256)
    try:
        yield path
    finally:
        cache.release(sha256 or "")
