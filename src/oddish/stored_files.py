"""What is stored for a task or a trial, file by file: listings with sizes, and one file's bytes
streamed. The API's files routes serve these; ``oddish pull`` downloads through those routes.

Two kinds of tree, one interface (:class:`FileTree`):

- a folder of objects: an attempt's Harbor output under its storage prefix
  (``tasks/<task>/trials/<trial>/attempt-N/``), or, for records made before outputs and tasks
  went to storage, a directory on this machine's disk read through
  :class:`~oddish.storage.local.DirectoryView` (no link followed, only regular files read);
- a task's archive (``tasks/<task>/<sha256>.tar.gz``), read as a stream: the listing and each
  file come from one sequential pass over the gzip, never the whole archive in memory.

Every path a caller names is validated as a storage key first (no ``..``, no leading ``/``, no
backslash, no control character): :class:`BadPath` says why, and nothing is read. Every call
blocks: the API runs them in a thread.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from oddish.storage import BaseStorage, ObjectNotFound, get_storage
from oddish.storage.keys import relative_key, validate_key, validate_prefix
from oddish.storage.local import DirectoryView
from oddish.task_store import is_legacy_location

# Files listed per answer: a listing costs one request per 1,000 keys in S3, and its answer
# about 100 bytes a file.
MAX_LISTED_FILES = 10_000
CHUNK_SIZE = 256 * 1024
# Where Harbor's agents write their ATIF trajectory, relative to the trial's output.
TRAJECTORY_NAME = "trajectory.json"
AGENT_DIR = "agent"


class BadPath(ValueError):
    """A path that would leave the tree (or could never name a file in it); the message says
    why."""


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int


@dataclass
class FileListing:
    files: list[StoredFile] = field(default_factory=list)
    # More files than MAX_LISTED_FILES: the listing stops there.
    truncated: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class OpenedFile:
    """A file found and opened: its size, and its bytes as they are read (close ``chunks`` when
    not reading it to the end)."""

    path: str
    size: int
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class Excerpt:
    """A file shown within a bound: all of it (``tail`` empty), or its first and last bytes
    with ``omitted`` bytes between them left out. Text decoded as UTF-8, bad bytes replaced."""

    path: str
    size: int
    head: str
    tail: str
    omitted: int


class FileTree(Protocol):
    def list_files(self, limit: int = MAX_LISTED_FILES) -> FileListing: ...

    def open_file(self, path: str) -> OpenedFile:
        """BadPath for a path that cannot name a file here; ObjectNotFound when none is."""
        ...


def checked_path(path: str) -> str:
    """``path`` if it names something inside a tree, else BadPath saying why."""
    try:
        return validate_key(path)
    except ValueError as exc:
        raise BadPath(f"path {path!r} is refused: {exc}") from None


class ObjectFolder:
    """The objects under a prefix of a store."""

    def __init__(self, storage: BaseStorage, prefix: str) -> None:
        self.storage = storage
        self.prefix = validate_prefix(prefix)

    def list_files(self, limit: int = MAX_LISTED_FILES) -> FileListing:
        listing = FileListing()
        for info in self.storage.list(self.prefix):
            if len(listing.files) >= limit:
                listing.truncated = True
                break
            listing.files.append(StoredFile(relative_key(self.prefix, info.key), info.size))
        return listing

    def open_file(self, path: str) -> OpenedFile:
        key = self.prefix + checked_path(path)
        size = self.storage.stat(key).size
        # Up to the size announced: an object replaced meanwhile by a longer one is cut there.
        return OpenedFile(path, size, self.storage.iter_bytes(key, CHUNK_SIZE, end=size))

    def _read(self, key: str, start: int, end: int) -> bytes:
        chunks = self.storage.iter_bytes(key, CHUNK_SIZE, start=start, end=end)
        try:
            return b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def excerpt(self, path: str, head_bytes: int, tail_bytes: int) -> Excerpt:
        """The file whole if it is at most ``head_bytes + tail_bytes`` long, else its head and
        its tail, each by a ranged read: a 4 GiB log costs two small reads."""
        key = self.prefix + checked_path(path)
        size = self.storage.stat(key).size
        if size <= head_bytes + tail_bytes:
            return Excerpt(path, size, self._read(key, 0, size).decode(errors="replace"), "", 0)
        head = self._read(key, 0, head_bytes).decode(errors="replace")
        tail = self._read(key, size - tail_bytes, size).decode(errors="replace")
        return Excerpt(path, size, head, tail, size - head_bytes - tail_bytes)

    def find(self, suffix: str) -> str | None:
        """The shallowest file whose path is ``suffix`` or ends with ``/`` + ``suffix`` (first by
        path among equals), if any."""
        best: tuple[int, str] | None = None
        for info in self.storage.list(self.prefix):
            rel = relative_key(self.prefix, info.key)
            if rel == suffix or rel.endswith("/" + suffix):
                candidate = (rel.count("/"), rel)
                best = candidate if best is None else min(best, candidate)
        return None if best is None else best[1]


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what tarfile's stream mode reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


class TaskArchive:
    """The files of a task's stored archive (regular files only; the archive holds no link)."""

    def __init__(self, storage: BaseStorage, key: str) -> None:
        self.storage = storage
        self.key = validate_key(key)

    def _open(self) -> tuple[_ChunkReader, tarfile.TarFile]:
        reader = _ChunkReader(self.storage.iter_bytes(self.key, CHUNK_SIZE))
        try:
            stream = io.BufferedReader(reader, CHUNK_SIZE)
            return reader, tarfile.open(fileobj=stream, mode="r|gz")
        except BaseException:
            reader.close()
            raise

    def list_files(self, limit: int = MAX_LISTED_FILES) -> FileListing:
        listing = FileListing()
        reader, tar = self._open()
        with reader, tar:
            for member in tar:
                if not member.isfile():
                    continue
                if len(listing.files) >= limit:
                    listing.truncated = True
                    break
                listing.files.append(StoredFile(member.name, member.size))
        return listing

    def open_file(self, path: str) -> OpenedFile:
        path = checked_path(path)
        reader, tar = self._open()
        try:
            for member in tar:
                if member.name == path and member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None  # a regular file's member
                    return OpenedFile(path, member.size, _drain(extracted, reader, tar))
        except BaseException:
            tar.close()
            reader.close()
            raise
        tar.close()
        reader.close()
        raise ObjectNotFound(path)


def _drain(extracted: IO[bytes], reader: _ChunkReader, tar: tarfile.TarFile) -> Iterator[bytes]:
    try:
        while chunk := extracted.read(CHUNK_SIZE):
            yield chunk
    finally:
        tar.close()
        reader.close()


def trial_output(location: str, storage: BaseStorage | None = None) -> ObjectFolder:
    """The output of an attempt recorded at ``location`` (a storage prefix, or a legacy absolute
    path on this machine)."""
    if is_legacy_location(location):
        return ObjectFolder(DirectoryView(Path(location)), "")
    return ObjectFolder(storage or get_storage(), location)


def task_files(location: str, storage: BaseStorage | None = None) -> FileTree:
    """The files of a task recorded at ``location`` (its archive's key, or a legacy absolute
    path of its copy)."""
    if is_legacy_location(location):
        return ObjectFolder(DirectoryView(Path(location)), "")
    return TaskArchive(storage or get_storage(), location)


def trajectory_path(output: ObjectFolder) -> str | None:
    """Where the agent's ATIF trajectory is in an attempt's output: ``agent/trajectory.json``
    (Harbor's agents write it in their logs directory), else the shallowest other
    ``trajectory.json`` under an ``agent`` directory (a multi-step task's steps/<step>/agent/)."""
    main = f"{AGENT_DIR}/{TRAJECTORY_NAME}"
    try:
        output.storage.stat(output.prefix + main)
        return main
    except ObjectNotFound:
        pass
    return output.find(main)
