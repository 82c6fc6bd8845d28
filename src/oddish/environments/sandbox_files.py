"""Copies in and out of a sandbox's directories that never follow a link.

A sandbox's writable directories are host directories its untrusted code writes into: any entry
in them may be a symbolic link to anywhere on the host, a FIFO, a device node or a huge sparse
file, and the worker that copies files in and out runs as root. So every copy here walks such a
tree one component at a time, each opened with ``O_NOFOLLOW`` under its parent's descriptor
(``openat``): a link is never followed, not even one swapped in during the walk.

- Into the sandbox (``upload_*``): the source is the worker's own (the task's tests, solution and
  environment files, collected artifacts): its root is opened as given and links inside it are
  copied as links (they resolve inside the sandbox). In the destination, a link or file standing
  where a directory or file is to be written is removed and replaced, never written through: a
  task's tests land as the task has them whatever the agent planted. Created entries can be
  handed to the sandbox's user (``owner``).
- Out of the sandbox (``download_*``): links and special files are skipped (a link at the root
  or on the way to it is an error), regular files are streamed with ``sendfile`` (a sparse file
  never inflates memory) under a :class:`Budget` of bytes and entries, and set-user/group-ID bits
  are dropped. The destination may itself lie in a sandbox's directory (a mounted artifacts
  dir), so it is walked the same way.
- :func:`remove_links_and_special_files` clears a directory the host reads in place (Harbor's
  mounted log directories) of what the sandbox's code could have planted there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that raced in must not block; the type is checked after opening.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SENDFILE_CHUNK = 8 * 1024 * 1024
# Deeper trees are not walked: every level holds two descriptors while it is copied.
MAX_DEPTH = 64

Owner = tuple[int, int] | None


@dataclass
class Budget:
    """What one download may still write; what it left out, and why."""

    bytes_left: int
    entries_left: int
    skipped: list[str] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        if len(self.skipped) < 1000:
            self.skipped.append(f"{path} ({reason})")


# --- opening -----------------------------------------------------------------------------------


def _check_parts(parts: Sequence[str]) -> None:
    for part in parts:
        if part in ("", ".", "..") or "/" in part:
            raise ValueError(f"bad path component {part!r}")


def _open_anchor(anchor: Path, *, create: bool) -> int:
    """The trusted directory a walk starts from (the worker's own path: followed as given)."""
    if create:
        anchor.mkdir(parents=True, exist_ok=True)
    return os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_subdir(parent: int, name: str) -> int:
    """A real directory ``name`` under ``parent``; ELOOP/ENOTDIR for anything else."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except NotADirectoryError:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise OSError(errno.ELOOP, "is a symbolic link: not followed", name) from None
        raise


def _make_subdir(parent: int, name: str, owner: Owner, mode: int = 0o755) -> int:
    """Open directory ``name`` under ``parent``, replacing whatever non-directory stands there."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=parent)  # a link or file: removed, never written through
    os.mkdir(name, mode, dir_fd=parent)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(anchor: Path, parts: Sequence[str]) -> int:
    """``anchor/parts...`` for reading: every component below ``anchor`` a real directory."""
    _check_parts(parts)
    fd = _open_anchor(anchor, create=False)
    for part in parts:
        try:
            child = _open_subdir(fd, part)
        finally:
            os.close(fd)
        fd = child
    return fd


def make_dirs(anchor: Path, parts: Sequence[str], owner: Owner) -> int:
    """``anchor/parts...`` for writing: missing directories created, links on the way replaced."""
    _check_parts(parts)
    fd = _open_anchor(anchor, create=True)
    for part in parts:
        try:
            child = _make_subdir(fd, part, owner)
        finally:
            os.close(fd)
        fd = child
    return fd


# --- files -------------------------------------------------------------------------------------


def _open_regular(parent: int, name: str) -> tuple[int, os.stat_result]:
    """A regular file ``name`` under ``parent``, never a link, FIFO or device."""
    before = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISLNK(before.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link: not followed", name)
    if not stat.S_ISREG(before.st_mode):
        raise OSError(errno.EINVAL, "is not a regular file: not copied", name)
    fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise OSError(errno.EINVAL, "changed while being opened: not copied", name)
    return fd, st


def _write_file(
    parent: int, name: str, source: int, st: os.stat_result, *, owner: Owner, limit: int | None
) -> None:
    """Copy the open regular file ``source`` to a new file ``name`` under ``parent``.

    Whatever stood at ``name`` (a link, a file) is removed first, so nothing is written through.
    At most ``limit`` bytes are copied: a file that grew past it is removed and EFBIG raised.
    """
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
            return  # the very same file: it is already there
        if stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        os.unlink(name, dir_fd=parent)
    mode = stat.S_IMODE(st.st_mode) & 0o777  # never set-user/group-ID
    target = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
    try:
        if owner is not None:
            os.fchown(target, *owner)
        copied = 0
        while True:
            count = _SENDFILE_CHUNK if limit is None else min(_SENDFILE_CHUNK, limit - copied + 1)
            sent = os.sendfile(target, source, None, count) if count > 0 else 0
            if sent == 0:
                break
            copied += sent
            if limit is not None and copied > limit:
                raise OSError(errno.EFBIG, "grew past the transfer budget", name)
        os.fchmod(target, mode)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        os.close(target)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=parent)
        raise
    os.close(target)


def _scandir(fd: int) -> list[tuple[str, os.stat_result]]:
    with os.scandir(fd) as entries:
        return sorted((e.name, e.stat(follow_symlinks=False)) for e in entries)


# --- into the sandbox --------------------------------------------------------------------------


def upload_file(
    source: Path, anchor: Path, parts: Sequence[str], *, into_dir: bool, owner: Owner
) -> None:
    """Copy the host file ``source`` to ``anchor/parts...`` (into it when it is a directory)."""
    if not parts:
        into_dir = True
    dir_parts, name = (list(parts), source.name) if into_dir else (list(parts[:-1]), parts[-1])
    with _closing(os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)) as src:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(source))
        with _closing(make_dirs(anchor, dir_parts, owner)) as parent:
            if not into_dir:
                # Like ``cp``: a real directory at the target receives the file.
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                        with _closing(_open_subdir(parent, name)) as inner:
                            _write_file(inner, source.name, src, st, owner=owner, limit=None)
                        return
            _write_file(parent, name, src, st, owner=owner, limit=None)


def upload_dir(
    source: Path,
    anchor: Path,
    parts: Sequence[str],
    *,
    owner: Owner,
    ignore: frozenset[str] = frozenset(),
) -> None:
    """Copy the contents of the host directory ``source`` into ``anchor/parts...``, leaving out
    entries named in ``ignore`` (at every level)."""
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with _closing(source_fd) as src, _closing(make_dirs(anchor, parts, owner)) as dst:
        if _same(src, dst):
            return  # the same bound host directory
        _upload_tree(src, dst, owner, ignore, depth=0, where=str(source))


def _upload_tree(
    src: int, dst: int, owner: Owner, ignore: frozenset[str], *, depth: int, where: str
) -> None:
    if depth >= MAX_DEPTH:
        raise OSError(errno.ELOOP, f"deeper than {MAX_DEPTH} levels", where)
    for name, st in _scandir(src):
        if name in ignore:
            continue
        if stat.S_ISDIR(st.st_mode):
            with _closing(_open_subdir(src, name)) as sub_src:
                mode = stat.S_IMODE(st.st_mode) & 0o777 | 0o700
                with _closing(_make_subdir(dst, name, owner, mode)) as sub_dst:
                    _upload_tree(
                        sub_src, sub_dst, owner, ignore, depth=depth + 1, where=f"{where}/{name}"
                    )
        elif stat.S_ISLNK(st.st_mode):
            _remove_non_dir(dst, name)
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            if owner is not None:
                os.chown(name, *owner, dir_fd=dst, follow_symlinks=False)
        elif stat.S_ISREG(st.st_mode):
            file_fd, file_st = _open_regular(src, name)
            with _closing(file_fd):
                _write_file(dst, name, file_fd, file_st, owner=owner, limit=None)
        # FIFOs, sockets and devices carry no content: skipped.


def _remove_non_dir(parent: int, name: str) -> None:
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", name)
    os.unlink(name, dir_fd=parent)


# --- out of the sandbox ------------------------------------------------------------------------


def download_file(
    anchor: Path,
    parts: Sequence[str],
    target_anchor: Path,
    target_parts: Sequence[str],
    *,
    into_dir: bool,
    budget: Budget,
) -> None:
    """Copy the regular file ``anchor/parts...`` to ``target_anchor/target_parts...``."""
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(anchor))
    with _closing(open_dir(anchor, parts[:-1])) as parent:
        src, st = _open_regular(parent, parts[-1])
    with _closing(src):
        if st.st_size > budget.bytes_left:
            raise OSError(
                errno.EFBIG,
                f"{st.st_size} bytes, over the transfer budget of {budget.bytes_left}",
                "/".join(parts),
            )
        if into_dir or not target_parts:
            dir_parts, name = list(target_parts), parts[-1]
        else:
            dir_parts, name = list(target_parts[:-1]), target_parts[-1]
        with _closing(make_dirs(target_anchor, dir_parts, None)) as target:
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.stat(name, dir_fd=target, follow_symlinks=False).st_mode):
                    with _closing(_open_subdir(target, name)) as inner:
                        _write_file(inner, parts[-1], src, st, owner=None, limit=budget.bytes_left)
                    budget.bytes_left -= st.st_size
                    return
            _write_file(target, name, src, st, owner=None, limit=budget.bytes_left)
        budget.bytes_left -= st.st_size


def download_dir(
    anchor: Path,
    parts: Sequence[str],
    target_anchor: Path,
    target_parts: Sequence[str],
    *,
    budget: Budget,
) -> None:
    """Copy the contents of ``anchor/parts...`` into ``target_anchor/target_parts...``."""
    with (
        _closing(open_dir(anchor, parts)) as src,
        _closing(make_dirs(target_anchor, target_parts, None)) as dst,
    ):
        if _same(src, dst):
            return  # the same bound host directory
        root = os.fstat(dst)
        _download_tree(src, dst, budget, depth=0, where="", avoid=(root.st_dev, root.st_ino))


def _download_tree(
    src: int, dst: int, budget: Budget, *, depth: int, where: str, avoid: tuple[int, int]
) -> None:
    for name, st in _scandir(src):
        path = f"{where}{name}"
        if budget.entries_left <= 0:
            budget.skip(path, "over the entry budget")
            continue
        if stat.S_ISLNK(st.st_mode):
            budget.skip(path, "symbolic link")
        elif stat.S_ISDIR(st.st_mode):
            if depth + 1 >= MAX_DEPTH:
                budget.skip(path, f"deeper than {MAX_DEPTH} levels")
            elif (st.st_dev, st.st_ino) == avoid:
                budget.skip(path, "the destination itself")
            else:
                budget.entries_left -= 1
                with (
                    _closing(_open_subdir(src, name)) as sub_src,
                    _closing(_make_subdir(dst, name, None)) as sub_dst,
                ):
                    _download_tree(
                        sub_src, sub_dst, budget, depth=depth + 1, where=f"{path}/", avoid=avoid
                    )
        elif not stat.S_ISREG(st.st_mode):
            budget.skip(path, "special file")
        elif st.st_size > budget.bytes_left:
            budget.skip(path, f"{st.st_size} bytes, over the transfer budget")
        else:
            budget.entries_left -= 1
            try:
                file_fd, file_st = _open_regular(src, name)
                with _closing(file_fd):
                    _write_file(dst, name, file_fd, file_st, owner=None, limit=budget.bytes_left)
            except OSError as exc:
                budget.skip(path, exc.strerror or str(exc))
                continue
            budget.bytes_left -= file_st.st_size


# --- in place ----------------------------------------------------------------------------------


def remove_links_and_special_files(root: Path) -> list[str]:
    """Delete every symbolic link, FIFO, socket and device under ``root``; what was deleted."""
    removed: list[str] = []
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return removed
    with _closing(fd):
        _sweep(fd, removed, depth=0, where="")
    return removed


def _sweep(fd: int, removed: list[str], *, depth: int, where: str) -> None:
    for name, st in _scandir(fd):
        if stat.S_ISDIR(st.st_mode):
            if depth + 1 < MAX_DEPTH:
                with contextlib.suppress(OSError), _closing(_open_subdir(fd, name)) as sub:
                    _sweep(sub, removed, depth=depth + 1, where=f"{where}{name}/")
        elif not stat.S_ISREG(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
                removed.append(f"{where}{name}")


# --- helpers -----------------------------------------------------------------------------------


def _same(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
