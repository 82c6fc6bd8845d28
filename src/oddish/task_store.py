"""Keeps a private copy of each submitted task, so later edits of the user's directory change
nothing: an archive in storage (``oddish.storage``), which any worker on any machine can fetch.

A submission copies the task into a temporary directory (rewriting its task.toml's docker image
when asked), packs the copy into a deterministic ``.tar.gz`` (entries sorted, mtime 0, owner 0,
no links), stores it under ``tasks/<task_id>/<sha256>.tar.gz`` and records that key and the
sha256 as the task's location. Workers unpack it through ``oddish.task_cache``.

Tasks stored before archives went to storage were directories under ``ODDISH_TASKS_DIR``; their
records hold that absolute path, still read from disk (:func:`is_legacy_location`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from harbor.models.task.config import TaskConfig

from oddish.archives import ArchiveError
from oddish.config import get_settings
from oddish.storage import BaseStorage, get_storage, task_archive_key, task_prefix

_CHUNK = 1024 * 1024


def is_legacy_location(location: str) -> bool:
    """Whether a task's recorded location is a local directory (an absolute path: the task was
    stored before archives went to storage) rather than the storage key of its archive (a key
    is always relative)."""
    return os.path.isabs(location)


@dataclass(frozen=True)
class StoredArchive:
    """A task's archive in storage: its key (the task's location), sha256 and size."""

    key: str
    sha256: str
    size: int


def copy_task_dir(source: Path, target: Path, *, docker_image: str | None = None) -> None:
    """Copy the task to ``target`` (links in it are followed: the copy holds their content); with
    ``docker_image``, the copy's environment uses that pre-built image."""
    shutil.copytree(source, target, symlinks=False)
    if docker_image:
        task_toml = target / "task.toml"
        config = TaskConfig.model_validate_toml(task_toml.read_text())
        config.environment.docker_image = docker_image
        task_toml.write_text(config.model_dump_toml())


def _refused(rel: str, what: str) -> ArchiveError:
    return ArchiveError(f"{rel!r} in the task is {what}; a task archive holds none", 422)


def _entries(top: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every directory and regular file below ``top`` as (relative '/'-path, lstat), sorted by
    name at each level, a directory before its contents. A link or special file is refused."""
    with os.scandir(top) as scan:
        names = sorted(entry.name for entry in scan)
    for name in names:
        path = top / name
        child = f"{rel}{name}"
        try:
            child.encode("utf-8")
        except UnicodeEncodeError:
            raise ArchiveError(f"{child!r} in the task has a name that is not UTF-8", 422) from None
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise _refused(child, "a symbolic link")
        if stat.S_ISDIR(st.st_mode):
            yield child, st
            yield from _entries(path, f"{child}/")
        elif stat.S_ISREG(st.st_mode):
            yield child, st
        else:
            raise _refused(child, "a special file (FIFO, socket or device)")


def pack_task_dir(directory: Path, out: BinaryIO) -> None:
    """Write ``directory``'s tree to ``out`` as a deterministic gzipped tar: the same files give
    the same bytes (entries sorted, mtime 0, uid/gid 0 without names, modes 0755 for directories
    and executables and 0644 for other files, no gzip name or time). Only regular files and
    directories: a link or special file is an ArchiveError (422). Files are opened without
    following a link."""
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, st in _entries(Path(directory)):
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            # O_NONBLOCK: a FIFO swapped in since the walk must not block; its type is refused.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(directory / rel, flags)
            with os.fdopen(fd, "rb") as source:
                opened = os.fstat(fd)
                if not stat.S_ISREG(opened.st_mode):
                    raise _refused(rel, "not a regular file")
                os.set_blocking(fd, True)
                info.size = opened.st_size
                tar.addfile(info, source)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def store_task_archive(
    source: Path,
    task_id: str,
    *,
    docker_image: str | None = None,
    storage: BaseStorage | None = None,
) -> StoredArchive:
    """Copy the task (see :func:`copy_task_dir`) into a temporary directory, pack it, and put
    the archive in storage; the temporary directory is removed whatever happens. Blocking: call
    it off the event loop. Nothing is stored when it raises."""
    storage = storage or get_storage()
    work = Path(tempfile.mkdtemp(prefix=f"oddish-{task_id}-"))
    try:
        copy = work / "task"
        copy_task_dir(source, copy, docker_image=docker_image)
        archive = work / "task.tar.gz"
        with open(archive, "wb") as out:
            pack_task_dir(copy, out)
        sha256 = file_sha256(archive)
        key = task_archive_key(task_id, sha256)
        info = storage.put_file(key, archive)
        return StoredArchive(key=key, sha256=sha256, size=info.size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def discard_task_archives(task_id: str, storage: BaseStorage | None = None) -> int:
    """Delete everything stored for the task (its archive, and what else goes under
    ``tasks/<task_id>/``); how many objects there were."""
    return (storage or get_storage()).delete_prefix(task_prefix(task_id))


def remove_task_dir(task_id: str) -> None:
    """Remove the task's local copy under ODDISH_TASKS_DIR (a task stored before archives went
    to storage has one)."""
    shutil.rmtree(get_settings().tasks_dir / task_id, ignore_errors=True)
