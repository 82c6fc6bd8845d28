"""Objects as files under a local directory (``ODDISH_STORAGE_DIR``, default ``<home>/storage``).

Layout: ``<root>/objects/<key>`` holds each object, ``<root>/tmp/`` the files being written (on
the same file system, so that a finished one is renamed into place atomically, after ``fsync``).
A trial's output is moved in by renames instead, synced first only with ``sync_moves``.
Nothing outside ``objects/`` is ever listed, so no key is reserved.

The root's own path is followed as configured; below it every component is opened with
``O_NOFOLLOW`` under its parent's descriptor: a symbolic link planted under the root is refused
(StorageError), never followed, so nothing outside the root is ever read, written or deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from oddish.storage import _fs
from oddish.storage.base import (
    BaseStorage,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageMisconfigured,
)
from oddish.storage.configs import LocalStorageConfig, S3StorageConfig
from oddish.storage.keys import key_parts, prefix_parts

OBJECTS = "objects"
TMP = "tmp"
_COPY_CHUNK = 1024 * 1024
# Files in tmp/ older than this were left by a writer that died; check() removes them.
STALE_TEMP_SEC = 24 * 3600.0


class LocalStorage(BaseStorage):
    name = "local"

    def __init__(self, root: Path, *, sync_moves: bool = False) -> None:
        self.root = Path(root)
        # Syncing each moved file and its directory costs a journal commit apiece: on a busy
        # worker that made storing a trial's output take 80 ms instead of 20, and held up
        # Postgres's own commits behind it.
        self.sync_moves = sync_moves
        # A move_tree found the directories it stores from on another file system.
        self._moves_refused = False

    @classmethod
    def from_config(cls, config: LocalStorageConfig | S3StorageConfig) -> LocalStorage:
        assert isinstance(config, LocalStorageConfig)
        return cls(config.root, sync_moves=config.sync_moves)

    def describe(self) -> str:
        return str(self.root)

    def check(self) -> None:
        """The root exists or can be created, and a file can be written, synced and removed."""
        try:
            with self._dir(OBJECTS, [], create=True), self._dir(TMP, [], create=True) as tmp:
                fd, name = _fs.create_temp(tmp)
                try:
                    os.write(fd, b"oddish")
                    os.fsync(fd)
                finally:
                    os.close(fd)
                    _fs.remove_quietly(tmp, name)
                self._remove_stale_temps(tmp)
        except _fs.LinkRefused as exc:
            raise StorageMisconfigured(
                f"ODDISH_STORAGE_DIR: {self.root / str(exc.filename)} is a symbolic link; "
                "oddish never follows links under its storage directory"
            ) from None
        except OSError as exc:
            raise StorageMisconfigured(
                f"ODDISH_STORAGE_DIR: cannot write to {self.root} ({exc.strerror or exc})"
            ) from None

    # --- opening -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, area: str, parts: list[str], *, create: bool) -> Iterator[int]:
        """The directory ``<root>/<area>/<parts...>``, opened without following a link below
        the root (OSError as the walk raised it: FileNotFoundError, LinkRefused, ...)."""
        root = _fs.open_anchor(self.root, create=create)
        try:
            top = _fs.open_subdir(root, area, create=create)
        finally:
            os.close(root)
        try:
            fd = _fs.open_dirs(top, parts, create=create)
        finally:
            os.close(top)
        try:
            yield fd
        finally:
            os.close(fd)

    def _refused(self, what: str, exc: _fs.LinkRefused) -> StorageError:
        return StorageError(
            f"{what}: {exc.filename!r} under {self.root} is a symbolic link; not followed"
        )

    def _open_object(self, key: str) -> tuple[int, os.stat_result]:
        parts = key_parts(key)
        try:
            with self._dir(OBJECTS, parts[:-1], create=False) as parent:
                return _fs.open_regular(parent, parts[-1])
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except _fs.LinkRefused as exc:
            raise self._refused(key, exc) from None
        except _fs.NotRegular as exc:
            if exc.is_dir:
                raise ObjectNotFound(key) from None
            raise StorageError(f"{key!r} under {self.root} is not a regular file") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc.strerror or exc}") from None

    # --- primitives ----------------------------------------------------------------------------

    def _put_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo:
        parts = key_parts(key)
        try:
            with self._dir(TMP, [], create=True) as tmp:
                fd, temp = _fs.create_temp(tmp)
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(fileobj, out, _COPY_CHUNK)
                        out.flush()
                        size = os.fstat(out.fileno()).st_size
                        os.fsync(out.fileno())
                    self._rename_in(tmp, temp, key, parts)
                except BaseException:
                    _fs.remove_quietly(tmp, temp)
                    raise
        except _fs.LinkRefused as exc:
            raise self._refused(key, exc) from None
        except (NotADirectoryError, IsADirectoryError):
            raise StorageError(
                f"{key!r} conflicts with an object or prefix already stored under {self.root}"
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot write {key!r}: {exc.strerror or exc}") from None
        return ObjectInfo(key, size)

    def _move_file(
        self, key: str, parent: int, name: str, fileobj: BinaryIO, st: os.stat_result
    ) -> ObjectInfo:
        """Rename the file into place: no copy of its bytes and no new file, which on some file
        systems costs more than the copy. Only a file with no other link (a hard link elsewhere
        would still reach the stored object) and on this file system; else, or when the rename
        is refused, it is copied from the descriptor already open. The directory it leaves is
        the caller's to remove."""
        if st.st_nlink == 1 and not self._moves_refused:
            try:
                return self._rename_file_in(key, parent, name, fileobj, st)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    self._moves_refused = True  # another file system: copy from now on
        return self._put_fileobj(key, fileobj)

    def _rename_file_in(
        self, key: str, parent: int, name: str, fileobj: BinaryIO, st: os.stat_result
    ) -> ObjectInfo:
        parts = key_parts(key)
        if self.sync_moves:
            os.fsync(fileobj.fileno())  # as durable as a copy would be
        with self._dir(OBJECTS, parts[:-1], create=True) as target:
            _fs.rename_into(parent, name, target, parts[-1], durable=self.sync_moves)
            moved = os.stat(parts[-1], dir_fd=target, follow_symlinks=False)
            if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
                # Swapped for another entry since it was opened: not the file checked.
                _fs.remove_quietly(target, parts[-1])
                raise OSError(errno.ESTALE, "the file changed while it was being stored")
        return ObjectInfo(key, os.fstat(fileobj.fileno()).st_size)

    def _rename_in(self, tmp: int, temp: str, key: str, parts: list[str]) -> None:
        for attempt in range(3):
            with self._dir(OBJECTS, parts[:-1], create=True) as parent:
                try:
                    _fs.rename_into(tmp, temp, parent, parts[-1], durable=True)
                    return
                except FileNotFoundError:
                    # The directory was removed by a delete_prefix in between: make it again.
                    if attempt == 2:
                        raise

    def _get_fileobj(self, key: str, fileobj: BinaryIO) -> ObjectInfo:
        fd, _ = self._open_object(key)
        with os.fdopen(fd, "rb") as source:
            shutil.copyfileobj(source, fileobj, _COPY_CHUNK)
            size = source.tell()
        fileobj.flush()
        return ObjectInfo(key, size)

    def _iter_range(
        self, key: str, chunk_size: int, start: int, end: int | None
    ) -> Iterator[bytes]:
        fd, st = self._open_object(key)
        stop = st.st_size if end is None else min(end, st.st_size)
        # A file object now: closed when the iterator is, or collected even if never started.
        return _read_range(os.fdopen(fd, "rb", buffering=0), start, stop, chunk_size)

    def _stat(self, key: str) -> ObjectInfo:
        fd, st = self._open_object(key)
        os.close(fd)
        return ObjectInfo(key, st.st_size)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with self._dir(OBJECTS, prefix_parts(prefix), create=False) as top:
                for rel, st in _fs.walk_files(top):
                    yield ObjectInfo(prefix + rel, st.st_size)
        except (FileNotFoundError, NotADirectoryError):
            return
        except _fs.LinkRefused as exc:
            raise self._refused(prefix, exc) from None
        except OSError as exc:
            raise StorageError(f"cannot list {prefix!r}: {exc.strerror or exc}") from None

    def _delete_prefix(self, prefix: str) -> int:
        parts = prefix_parts(prefix)
        try:
            with self._dir(OBJECTS, parts[:-1], create=False) as parent:
                try:
                    top = _fs.open_subdir(parent, parts[-1], create=False)
                except _fs.LinkRefused:
                    # A link planted as the prefix itself: removed, its target untouched.
                    _fs.remove_quietly(parent, parts[-1])
                    return 0
                try:
                    removed = _fs.remove_tree_contents(top)
                finally:
                    os.close(top)
                with contextlib.suppress(OSError):
                    os.rmdir(parts[-1], dir_fd=parent)
                return removed
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except _fs.LinkRefused as exc:
            raise self._refused(prefix, exc) from None
        except OSError as exc:
            raise StorageError(f"cannot delete {prefix!r}: {exc.strerror or exc}") from None

    def _remove_stale_temps(self, tmp: int) -> None:
        cutoff = time.time() - STALE_TEMP_SEC
        with os.scandir(tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(entry.name, dir_fd=tmp)


def _read_range(source: BinaryIO, start: int, stop: int, chunk_size: int) -> Iterator[bytes]:
    try:
        position = start
        while position < stop:
            chunk = os.pread(source.fileno(), min(chunk_size, stop - position), position)
            if not chunk:  # truncated since it was opened
                break
            position += len(chunk)
            yield chunk
    except OSError as exc:
        raise StorageError(f"read error: {exc.strerror or exc}") from None
    finally:
        source.close()


class DirectoryView(LocalStorage):
    """A plain directory read as objects, file by file: what older records point at (a task
    copied under ODDISH_TASKS_DIR, a trial's output left on the worker's disk) before those went
    to storage. Read only. Its path is followed as given (it comes from our records); below it
    no link is followed and only regular files are read, as in the store: a link or a special
    file there is no object (ObjectNotFound), never a look through it."""

    name = "directory"

    @contextlib.contextmanager
    def _dir(self, area: str, parts: list[str], *, create: bool) -> Iterator[int]:
        if create:
            raise StorageError(f"{self.root} is read only")
        root = _fs.open_anchor(self.root, create=False)
        try:
            fd = _fs.open_dirs(root, parts, create=False)
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_object(self, key: str) -> tuple[int, os.stat_result]:
        try:
            return super()._open_object(key)
        except StorageError as exc:
            if isinstance(exc, ObjectNotFound):
                raise
            # A link or special file planted in the directory: never served.
            raise ObjectNotFound(key) from None

    def _delete_prefix(self, prefix: str) -> int:
        raise StorageError(f"{self.root} is read only")
