"""The storage interface: objects under '/'-separated keys, on a local directory or S3.

Every method is synchronous (boto3 is); async callers use ``asyncio.to_thread``. Every key and
prefix is validated (:mod:`oddish.storage.keys`) before a backend sees it: a bad one is a
ValueError. Everything else that goes wrong is a :class:`StorageError`:

- :class:`StorageMisconfigured`: a setting is wrong (its message is one line naming it);
- :class:`ObjectNotFound`: no object under that key;
- :class:`StorageUnavailable`: the store could not be reached or failed transiently, after the
  backend's own retries; trying again later may succeed.

Backends implement the primitives (``_put_fileobj``, ``_get_fileobj``, ``_iter_range``,
``_stat``, ``_list``, ``_delete_prefix``); files and whole trees are built here on top of them,
once for both: a local tree is read without following any link, a downloaded tree is written
without writing through any link, and a key that would leave the directory is refused.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import io
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar

from oddish.storage import _fs
from oddish.storage.keys import key_parts, relative_key, validate_key, validate_prefix

if TYPE_CHECKING:
    from oddish.storage.configs import LocalStorageConfig, S3StorageConfig

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024 * 1024


class StorageError(Exception):
    """Something went wrong in the store; the message says what."""


class StorageMisconfigured(StorageError):
    """A setting is wrong: the message is one line that starts with the setting to fix."""


class ObjectNotFound(StorageError):
    """No object under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key!r}")
        self.key = key


class StorageUnavailable(StorageError):
    """The store is unreachable or failed transiently (after retries): try again later."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class BaseStorage(ABC):
    """Objects under keys. Subclasses set :attr:`name` (the factory's name for them)."""

    name: ClassVar[str]
    # Files of a tree transferred at once by put_tree/get_tree.
    tree_concurrency: int = 1

    # --- what a backend implements -------------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_config(cls, config: LocalStorageConfig | S3StorageConfig) -> BaseStorage:
        """The store a config of this backend's type describes (no request made yet)."""

    @abstractmethod
    def describe(self) -> str:
        """Where objects are stored, for logs and banners (no secrets): ``s3://bucket/prefix/``
        or the local directory."""

    @abstractmethod
    def check(self) -> None:
        """Start-up validation: the store is there, reachable and usable with these settings.
        StorageMisconfigured with a line naming the setting to fix otherwise (an unreachable
        endpoint included: at start-up that is a configuration to fix, not a blip to wait out)."""

    @abstractmethod
    def _put_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo: ...

    @abstractmethod
    def _get_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo: ...

    @abstractmethod
    def _iter_range(
        self, key: str, chunk_size: int, start: int, end: int | None
    ) -> Iterator[bytes]:
        """Open the object now (ObjectNotFound raised by this call, not by the first next()),
        and return an iterator over bytes [start, end) in chunks of at most ``chunk_size``."""

    @abstractmethod
    def _stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> int: ...

    def _put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._put_fileobj(key, io.BytesIO(data))

    # --- the interface -------------------------------------------------------------------------

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo:
        """Store what ``fileobj`` holds from its position to its end (read in chunks, never whole
        into memory). The object appears whole or not at all; an existing one is replaced."""
        return self._put_fileobj(validate_key(key), fileobj)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._put_bytes(validate_key(key), bytes(data))

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store the regular file at ``path`` (a link or special file there is refused: OSError).
        Large files go up in parts (S3 multipart)."""
        validate_key(key)
        path = Path(path)
        parent = _fs.open_anchor(path.parent, create=False)
        try:
            fd, _ = _fs.open_regular(parent, path.name)
        finally:
            os.close(parent)
        with os.fdopen(fd, "rb") as fileobj:
            return self._put_fileobj(key, fileobj)

    def get_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo:
        """Write the object into the open, writable ``fileobj``."""
        return self._get_fileobj(validate_key(key), fileobj)

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        """Download the object to ``path``, atomically: a temporary file next to it is renamed
        over it once complete, so ``path`` is never seen half-written. The parent directory is
        created when missing."""
        validate_key(key)
        path = Path(path)
        parent = _fs.open_anchor(path.parent, create=True)
        try:
            return self._download_into(key, parent, path.name)
        finally:
            os.close(parent)

    def iter_bytes(
        self,
        key: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        start: int = 0,
        end: int | None = None,
    ) -> Iterator[bytes]:
        """The object's bytes ``[start, end)`` (``end`` exclusive, None for the end of the
        object; a range past the end is cut short there), streamed in chunks of at most
        ``chunk_size``: never the whole object in memory. The object is opened by this call, so
        ObjectNotFound comes before any byte; close the iterator when not reading it to the end
        (or let it be collected)."""
        validate_key(key)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad range start={start} end={end}")
        return self._iter_range(key, chunk_size, start, end)

    def stat(self, key: str) -> ObjectInfo:
        """The object's size; ObjectNotFound when there is none."""
        return self._stat(validate_key(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (not empty: never everything at once); how many
        there were. Deleting what is not there is no error (0)."""
        return self._delete_prefix(validate_prefix(prefix, allow_empty=False))

    def put_tree(self, prefix: str, directory: Path) -> builtins.list[ObjectInfo]:
        """Upload every regular file below ``directory`` to ``prefix`` + its relative path.

        No symbolic link is followed, not even one swapped in during the walk: links and special
        files (FIFOs, sockets, devices) are skipped (logged), each file is opened with
        ``O_NOFOLLOW`` under its parent's descriptor and read only once ``fstat`` says it is a
        regular file; ``directory`` itself must not be a link. Files whose names are no valid
        key are skipped too. Objects already under the prefix are left (not a sync): upload to
        a fresh prefix, or run again to retry a partial upload (it overwrites the same keys).
        Returns what was uploaded, by key.
        """
        return self._put_tree(prefix, directory, move=False)

    def move_tree(self, prefix: str, directory: Path) -> builtins.list[ObjectInfo]:
        """:meth:`put_tree` for a directory the caller removes afterwards: a backend may move
        files into place rather than copy them (the local one does, where it can). Run again
        after a failure, it stores what the first run left."""
        return self._put_tree(prefix, directory, move=True)

    def _put_tree(self, prefix: str, directory: Path, *, move: bool) -> builtins.list[ObjectInfo]:
        validate_prefix(prefix)
        skipped: builtins.list[str] = []
        anchor = _fs.open_anchor(Path(directory), create=False, follow=False)
        try:

            def upload(rel: str) -> ObjectInfo | None:
                parts = rel.split("/")
                try:
                    parent = _fs.open_dirs(anchor, parts[:-1], create=False)
                except (_fs.LinkRefused, FileNotFoundError, NotADirectoryError):
                    skipped.append(f"{rel} (changed while being walked)")
                    return None
                try:
                    try:
                        fd, st = _fs.open_regular(parent, parts[-1])
                    except (
                        _fs.LinkRefused,
                        _fs.NotRegular,
                        FileNotFoundError,
                        NotADirectoryError,
                    ):
                        skipped.append(f"{rel} (changed while being walked)")
                        return None
                    with os.fdopen(fd, "rb") as fileobj:
                        if move:
                            return self._move_file(prefix + rel, parent, parts[-1], fileobj, st)
                        return self._put_fileobj(prefix + rel, fileobj)
                finally:
                    os.close(parent)

            def relative_paths() -> Iterator[str]:
                for rel, _ in _fs.walk_files(anchor, skipped=skipped):
                    try:
                        validate_key(prefix + rel)
                    except ValueError as exc:
                        skipped.append(f"{rel!r} ({exc})")
                        continue
                    yield rel

            results = self._run_bounded(relative_paths(), upload)
        finally:
            os.close(anchor)
        if skipped:
            shown = "; ".join(skipped[:20]) + ("; ..." if len(skipped) > 20 else "")
            log.warning("put_tree %s: skipped %d entries: %s", directory, len(skipped), shown)
        return [info for info in results if info is not None]

    def _move_file(
        self, key: str, parent: int, name: str, fileobj: BinaryIO, st: os.stat_result
    ) -> ObjectInfo:
        """Store the regular file ``name`` under the directory ``parent`` (open as ``fileobj``,
        ``st`` its fstat) at ``key``, moving it where the backend can; a copy by default."""
        return self._put_fileobj(key, fileobj)

    def get_tree(self, prefix: str, directory: Path) -> builtins.list[ObjectInfo]:
        """Download every object under ``prefix`` into ``directory`` at its relative key.

        Every relative key is validated before anything is written: one that would leave the
        directory (``..``, an absolute path, a backslash) is a ValueError and nothing is
        downloaded. Inside the directory nothing is written through a link: a directory on the
        way that is a link is a StorageError, a link where a file goes is replaced. Each file
        appears atomically; files already there and not in the store are left.
        """
        validate_prefix(prefix)
        objects = builtins.list(self.list(prefix))
        targets = [(info.key, key_parts(relative_key(prefix, info.key))) for info in objects]
        anchor = _fs.open_anchor(Path(directory), create=True)
        try:

            def download(target: tuple[str, builtins.list[str]]) -> ObjectInfo:
                key, parts = target
                try:
                    parent = _fs.open_dirs(anchor, parts[:-1], create=True)
                except _fs.LinkRefused as exc:
                    raise StorageError(
                        f"get_tree {directory}: refusing to write {key!r} through the symbolic "
                        f"link {exc.filename!r}"
                    ) from None
                except NotADirectoryError:
                    raise StorageError(
                        f"get_tree {directory}: a file stands where {key!r} needs a directory"
                    ) from None
                try:
                    return self._download_into(key, parent, parts[-1])
                finally:
                    os.close(parent)

            return self._run_bounded(targets, download)
        finally:
            os.close(anchor)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` ('' or ending with '/'), recursively, sorted by key."""
        return self._list(validate_prefix(prefix))

    # --- shared machinery ----------------------------------------------------------------------

    def _download_into(self, key: str, parent: int, name: str) -> ObjectInfo:
        """Download ``key`` to ``name`` under the open directory ``parent``, atomically."""
        fd, temp = _fs.create_temp(parent)
        try:
            with os.fdopen(fd, "wb") as fileobj:
                info = self._get_fileobj(key, fileobj)
            try:
                _fs.rename_into(parent, temp, parent, name)
            except IsADirectoryError:
                raise StorageError(f"a directory stands where {key!r} is to be written") from None
        except BaseException:
            _fs.remove_quietly(parent, temp)
            raise
        return info

    def _run_bounded[T, R](self, items: Iterable[T], work: Callable[[T], R]) -> builtins.list[R]:
        """``work`` over ``items`` in order, ``tree_concurrency`` at a time, never queueing more
        than twice that (items come from a lazy walk); the first failure cancels what has not
        started and is raised."""
        if self.tree_concurrency <= 1:
            return [work(item) for item in items]
        results: builtins.list[R] = []
        pending: collections.deque[Future[R]] = collections.deque()
        with ThreadPoolExecutor(self.tree_concurrency, thread_name_prefix="storage") as pool:
            try:
                for item in items:
                    if len(pending) >= 2 * self.tree_concurrency:
                        results.append(pending.popleft().result())
                    pending.append(pool.submit(work, item))
                while pending:
                    results.append(pending.popleft().result())
            except BaseException:
                for future in pending:
                    future.cancel()
                with contextlib.suppress(Exception):
                    for future in pending:
                        if not future.cancelled():
                            future.exception()
                raise
        return results
