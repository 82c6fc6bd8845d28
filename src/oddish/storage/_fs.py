"""Local file system walks that never follow a symbolic link.

Every path below a trusted directory (the local store's root, a tree being uploaded, a directory
a tree is downloaded into) is walked one component at a time, each opened with ``O_NOFOLLOW``
under its parent's descriptor (``openat``): a link is never followed, not even one swapped in
during the walk. Links and special files found in a tree are skipped, never opened; a file is
read only after ``fstat`` of the opened descriptor says it is a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that raced in must not block; the type is checked after opening.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Deeper trees are not walked (a key has at most 512 components; a tree deeper than this is no
# task or trial output).
MAX_DEPTH = 128
TEMP_PREFIX = ".oddish-part-"


class LinkRefused(OSError):
    """A symbolic link stands where a directory or file was to be opened: never followed."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link: not followed", name)


class NotRegular(OSError):
    """Not a regular file (a directory, FIFO, socket, device): never read."""

    def __init__(self, name: str, mode: int) -> None:
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        super().__init__(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, kind, name)
        self.is_dir = stat.S_ISDIR(mode)


def open_anchor(path: Path, *, create: bool, follow: bool = True) -> int:
    """The trusted directory a walk starts from: its own path is followed as given, except its
    last component when ``follow`` is false (a tree's root that is a link is refused)."""
    if create:
        path.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if follow:
        return os.open(path, flags)
    try:
        return os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            raise LinkRefused(str(path)) from None
        raise


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_subdir(parent: int, name: str, *, create: bool) -> int:
    """The real directory ``name`` under ``parent`` (created when missing and ``create``).

    LinkRefused for a link, NotADirectoryError for a file, FileNotFoundError when missing.
    """
    for _ in range(3):  # a directory removed or created concurrently: look again
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent, name):
                raise LinkRefused(name) from None
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=parent)
    return os.open(name, DIR_FLAGS, dir_fd=parent)


def open_dirs(anchor: int, parts: Sequence[str], *, create: bool) -> int:
    """``parts`` below the open directory ``anchor``, each a real directory; a new descriptor."""
    fd = os.dup(anchor)
    for part in parts:
        try:
            child = open_subdir(fd, part, create=create)
        finally:
            os.close(fd)
        fd = child
    return fd


def open_regular(parent: int, name: str) -> tuple[int, os.stat_result]:
    """The regular file ``name`` under ``parent``, opened for reading without following a link."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(name) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(name, st.st_mode)
    os.set_blocking(fd, True)
    return fd, st


def open_file_under(anchor: int, parts: Sequence[str]) -> tuple[int, os.stat_result]:
    """The regular file ``anchor/parts...``, every component below ``anchor`` walked without
    following a link."""
    parent = open_dirs(anchor, parts[:-1], create=False)
    try:
        return open_regular(parent, parts[-1])
    finally:
        os.close(parent)


def create_temp(parent: int) -> tuple[int, str]:
    """A new empty file under ``parent`` for writing, and its name (to be renamed into place)."""
    name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    return os.open(name, CREATE_FLAGS, 0o644, dir_fd=parent), name


def remove_quietly(parent: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=parent)


def rename_into(
    src_dir: int, src_name: str, dst_dir: int, dst_name: str, *, durable: bool = False
) -> None:
    """Atomically put ``src_name`` at ``dst_name``. A link standing at ``dst_name`` is replaced,
    never written through; a directory there is an IsADirectoryError."""
    os.rename(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    if durable:
        os.fsync(dst_dir)


def walk_files(
    top: int, *, skipped: list[str] | None = None, _rel: str = "", _depth: int = 0
) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file below the open directory ``top`` as ('/'-joined relative path, lstat),
    in the order of the relative paths (as S3 lists keys: a directory's entries sort as
    ``name/``). Links and special files are skipped (named in ``skipped``), never opened;
    directories are entered only as real directories opened with ``O_NOFOLLOW``."""
    if _depth > MAX_DEPTH:
        if skipped is not None:
            skipped.append(f"{_rel} (deeper than {MAX_DEPTH} levels)")
        return
    with os.scandir(top) as scan:
        entries = [(entry.name, entry.stat(follow_symlinks=False)) for entry in scan]
    entries.sort(key=lambda e: e[0] + "/" if stat.S_ISDIR(e[1].st_mode) else e[0])
    for name, st in entries:
        rel = f"{_rel}{name}"
        if stat.S_ISREG(st.st_mode):
            yield rel, st
        elif stat.S_ISDIR(st.st_mode):
            try:
                child = open_subdir(top, name, create=False)
            except OSError as exc:  # replaced by a link or removed since it was listed
                if skipped is not None:
                    skipped.append(f"{rel}/ ({exc.strerror})")
                continue
            try:
                yield from walk_files(child, skipped=skipped, _rel=f"{rel}/", _depth=_depth + 1)
            finally:
                os.close(child)
        elif skipped is not None:
            kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
            skipped.append(f"{rel} ({kind})")


def remove_tree_contents(top: int, _depth: int = 0) -> int:
    """Remove everything below the open directory ``top`` without following a link (a link is
    removed itself); the number of regular files removed. A directory that is not empty by the
    time it is removed (written to concurrently) is left."""
    removed = 0
    with os.scandir(top) as scan:
        entries = [(entry.name, entry.stat(follow_symlinks=False)) for entry in scan]
    for name, st in entries:
        if stat.S_ISDIR(st.st_mode) and _depth < MAX_DEPTH:
            try:
                child = open_subdir(top, name, create=False)
            except (FileNotFoundError, LinkRefused, NotADirectoryError):
                continue
            try:
                removed += remove_tree_contents(child, _depth + 1)
            finally:
                os.close(child)
            try:
                os.rmdir(name, dir_fd=top)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise
        elif not stat.S_ISDIR(st.st_mode):
            try:
                os.unlink(name, dir_fd=top)
            except FileNotFoundError:
                continue
            removed += int(stat.S_ISREG(st.st_mode))
    return removed
