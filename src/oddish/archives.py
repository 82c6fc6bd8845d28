"""Safe unpacking of an uploaded Harbor task archive (``.tar.gz`` of one task directory).

Everything in an upload is untrusted: sizes are counted on the bytes actually read and written,
member names and types are checked before anything touches the disk, and extraction happens in a
temporary directory next to the target that is renamed into place only once the whole archive
has been accepted, so a refusal never leaves anything behind.

tarfile reads a pax extended header, a GNU long name or link, or the extension blocks of a GNU
sparse file whole into memory before it hands out the member they describe. ``_BoundedTarInfo``
sees each header block first: such records are refused from their declared size before a byte of
them is read, and what they add up to per member and per archive is bounded too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["ArchiveError", "ExtractedTask", "extract_task_archive"]

_CHUNK = 64 * 1024
_MAX_COMPONENT_BYTES = 255
_MAX_PATH_BYTES = 4096
# Tar headers, pax/GNU long-name records and block padding come on top of file contents in the
# decompressed stream; this bounds them (tarfile reads such records whole into memory).
_METADATA_BYTES_PER_MEMBER = 4096
_METADATA_BYTES_BASE = 1024 * 1024
# pax extended headers and GNU long names/links in front of one member, together; real ones hold a
# path of at most 4 KiB, times, owners and a few extended attributes.
MAX_HEADER_BYTES = 1024 * 1024
# Headers of that kind in front of one member: GNU tar writes two at most ('L', 'K'), pax two ('g',
# 'x'). Each is a level of recursion in tarfile, and zero-sized ones cost nothing else.
_MAX_HEADER_CHAIN = 8
# All of them in the whole archive: each one's keywords are applied to its member one by one.
_MAX_ARCHIVE_HEADER_BYTES = 16 * 1024 * 1024
# pax global headers (git archive writes one, with the commit id) apply to every later member.
_MAX_GLOBAL_HEADER_BYTES = 4096
_EXTENDED_HEADER_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


class ArchiveError(ValueError):
    """An uploaded archive was refused; ``str(error)`` is a sentence fit to show the user."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ExtractedTask:
    path: Path
    content_hash: str
    name: str
    files: int
    unpacked_bytes: int


@dataclass(frozen=True)
class _FileEntry:
    parts: tuple[str, ...]
    executable: bool
    digest: str
    size: int


class _LimitedReader:
    """Reads the compressed upload, refusing it once it exceeds ``limit`` bytes (reads at most
    limit+1)."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        allowed = self._limit + 1 - self.consumed
        if size is None or size < 0 or size > allowed:
            size = allowed
        data = b"" if size <= 0 else self._raw.read(size)
        self.consumed += len(data)
        if self.consumed > self._limit:
            raise ArchiveError(f"The archive is larger than the limit of {self._limit} bytes.", 413)
        return data


class _Decompressed:
    """The decompressed tar stream, with gzip failures turned into ArchiveErrors and a size cap."""

    def __init__(self, compressed: _LimitedReader, limit: int, unpacked_limit: int) -> None:
        self._gzip = gzip.GzipFile(fileobj=compressed, mode="rb")  # type: ignore[call-overload]
        self._limit = limit
        self._unpacked_limit = unpacked_limit
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._gzip.read(size)
        except gzip.BadGzipFile as exc:
            if self.total == 0:
                raise ArchiveError(
                    "The upload is not a gzip-compressed tar archive (.tar.gz)."
                ) from exc
            raise ArchiveError(f"The archive is corrupt: {exc}.") from exc
        except EOFError as exc:
            raise ArchiveError(
                "The archive is truncated: the gzip stream ends prematurely."
            ) from exc
        except zlib.error as exc:
            raise ArchiveError(f"The archive is corrupt: {exc}.") from exc
        self.total += len(data)
        if self.total > self._limit:
            raise ArchiveError(
                f"The archive unpacks to more than the limit of {self._unpacked_limit} bytes.", 413
            )
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class _HeaderBudget:
    """What the extended headers of one archive have used so far."""

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.chain_bytes = 0
        self.chain_length = 0
        self.archive_bytes = 0
        self.global_bytes = 0

    def spend(self, header: tarfile.TarInfo) -> None:
        """Account for an extended header from its block alone, before its data is read."""
        size = header.size
        self.chain_length += 1
        self.chain_bytes += size
        self.archive_bytes += size
        if header.type == tarfile.XGLTYPE:
            self.global_bytes += size
        if self.chain_length > _MAX_HEADER_CHAIN:
            raise ArchiveError(
                f"The archive has more than {_MAX_HEADER_CHAIN} extended headers (pax or GNU long "
                "name records) in front of one member."
            )
        if self.chain_bytes > self.max_header_bytes:
            raise ArchiveError(
                f"The archive has an extended header (pax or GNU long name record) of "
                f"{self.chain_bytes} bytes, over the limit of {self.max_header_bytes} bytes.",
                413,
            )
        if self.global_bytes > _MAX_GLOBAL_HEADER_BYTES:
            raise ArchiveError(
                f"The archive's pax global headers hold more than the limit of "
                f"{_MAX_GLOBAL_HEADER_BYTES} bytes.",
                413,
            )
        if self.archive_bytes > _MAX_ARCHIVE_HEADER_BYTES:
            raise ArchiveError(
                f"The archive's extended headers (pax or GNU long name records) hold more than "
                f"the limit of {_MAX_ARCHIVE_HEADER_BYTES} bytes in all.",
                413,
            )

    def member_reached(self) -> None:
        self.chain_bytes = 0
        self.chain_length = 0


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that checks each header block before tarfile acts on it (see the module's doc).

    ``_proc_member`` is tarfile's documented hook for subclasses; ``budget`` is set on a subclass
    made for each archive (``_tarinfo_class``).
    """

    budget: _HeaderBudget

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADER_TYPES:
            self.budget.spend(self)
        elif self.type == tarfile.GNUTYPE_SPARSE:
            # Refused before tarfile follows its chain of extension blocks.
            raise ArchiveError(
                f"Archive member {self.name!r} is a sparse file; "
                "only regular files and directories are allowed."
            )
        else:
            self.budget.member_reached()
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    # pax headers that describe a GNU sparse file: refused before tarfile parses the map (format
    # 1.0 keeps it in the member's data, which tarfile would read line by line, unbounded).
    def _proc_gnusparse_00(self, next: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(next)

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(next)

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(next)


def _sparse(member: tarfile.TarInfo) -> ArchiveError:
    return ArchiveError(
        f"Archive member {member.name!r} is a sparse file (pax GNU.sparse records); "
        "only regular files and directories are allowed."
    )


def _tarinfo_class(max_header_bytes: int) -> type[_BoundedTarInfo]:
    return type("_BoundedTarInfo", (_BoundedTarInfo,), {"budget": _HeaderBudget(max_header_bytes)})


def extract_task_archive(
    source: BinaryIO | Path,
    target_dir: Path,
    *,
    max_archive_bytes: int,
    max_unpacked_bytes: int,
    max_file_bytes: int | None = None,
    max_members: int = 10_000,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> ExtractedTask:
    """Unpack a gzipped tar of one Harbor task directory into ``target_dir``.

    The task's files may sit at the archive root or under exactly one top-level folder, which is
    stripped. ``target_dir`` must not exist or be empty. Raises ArchiveError (with ``status_code``
    400, 413 or 422) for anything malformed, unsafe, too large or not a Harbor task; nothing is left
    in ``target_dir`` then.

    ``max_file_bytes`` bounds each file (default: ``max_unpacked_bytes``), refused from its
    header before any of it is read; ``max_header_bytes`` bounds the pax and GNU long-name records
    in front of one member.

    ``content_hash`` is a sha256 over the sorted (relative path, executable bit, sha256 of bytes)
    of the regular files, so it does not depend on member order, mtimes, owners or the folder name.
    """
    target_dir = Path(target_dir)
    occupied = target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir()))
    if target_dir.is_symlink() or occupied:
        raise FileExistsError(f"{target_dir} exists and is not an empty directory")
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.upload-", dir=target_dir.parent))
    try:
        root = staging / "root"
        root.mkdir()
        os.chmod(root, 0o755)
        limits = _Limits(
            archive=max_archive_bytes,
            unpacked=max_unpacked_bytes,
            file=min(max_file_bytes or max_unpacked_bytes, max_unpacked_bytes),
            members=max_members,
            header=max_header_bytes,
        )
        if isinstance(source, Path):
            with source.open("rb") as raw:
                entries = _extract(raw, root, limits)
        else:
            entries = _extract(source, root, limits)

        task_root, folder = _task_root(root)
        if folder is not None:
            entries = [_FileEntry(e.parts[1:], e.executable, e.digest, e.size) for e in entries]
        toml_name = _check_task_toml(task_root)
        result = ExtractedTask(
            path=target_dir,
            content_hash=_content_hash(entries),
            name=folder or toml_name or "task",
            files=len(entries),
            unpacked_bytes=sum(e.size for e in entries),
        )
        os.rename(task_root, target_dir)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class _Limits:
    archive: int
    unpacked: int
    file: int
    members: int
    header: int


def _extract(raw: BinaryIO, root: Path, limits: _Limits) -> list[_FileEntry]:
    max_unpacked_bytes, max_members = limits.unpacked, limits.members
    compressed = _LimitedReader(raw, limits.archive)
    stream = _Decompressed(
        compressed,
        limit=max_unpacked_bytes + _METADATA_BYTES_BASE + _METADATA_BYTES_PER_MEMBER * max_members,
        unpacked_limit=max_unpacked_bytes,
    )
    try:
        tar = tarfile.open(  # type: ignore[call-overload]
            fileobj=stream, mode="r|", tarinfo=_tarinfo_class(limits.header)
        )
    except ArchiveError:
        raise
    except (tarfile.TarError, ValueError, OverflowError) as exc:
        if stream.total == 0:
            raise ArchiveError("The archive is empty.") from exc
        raise ArchiveError(f"The gzip file does not contain a valid tar archive ({exc}).") from exc

    entries: list[_FileEntry] = []
    seen: set[tuple[str, ...]] = set()
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = {()}
    unpacked = 0
    members = 0
    with tar:
        while True:
            member = _next_member(tar)
            if member is None:
                break
            # tarfile keeps every member it read, each with its pax headers; none is needed again.
            tar.members.clear()
            members += 1
            if members > max_members:
                raise ArchiveError(
                    f"The archive has more than the limit of {max_members} members.", 413
                )
            parts = _member_parts(member)
            name = member.name
            if not parts:
                if member.isdir():
                    continue  # the "./" entry of `tar -C dir .`
                raise ArchiveError(f"Archive member {name!r} has no usable file name.")
            if parts in seen:
                raise ArchiveError(
                    f"Archive member {name!r} appears more than once in the archive."
                )
            seen.add(parts)
            for i in range(1, len(parts)):
                if parts[:i] in files:
                    raise ArchiveError(
                        f"Archive member {name!r} is inside {'/'.join(parts[:i])!r}, "
                        "which is a file."
                    )

            if member.isdir():
                _make_dirs(root, parts, dirs)
            elif member.isreg() and not member.issparse():
                if parts in dirs:
                    raise ArchiveError(f"Archive member {name!r} is both a file and a directory.")
                # Known from the header (or its pax "size"): refused before a byte is read.
                if member.size > limits.file:
                    raise ArchiveError(
                        f"Archive member {name!r} is {member.size} bytes, over the limit of "
                        f"{limits.file} bytes per file.",
                        413,
                    )
                if unpacked + member.size > max_unpacked_bytes:
                    raise _too_big(name, max_unpacked_bytes)
                _make_dirs(root, parts[:-1], dirs)
                budget = min(max_unpacked_bytes - unpacked, limits.file)
                entry = _write_file(tar, member, root, parts, budget, max_unpacked_bytes)
                unpacked += entry.size
                files.add(parts)
                entries.append(entry)
            else:
                raise ArchiveError(
                    f"Archive member {name!r} is {_kind(member)}; "
                    "only regular files and directories are allowed."
                )

        # Reading to the end checks the gzip trailer (CRC and length) and catches trailing garbage.
        stream.drain()

    if not entries:
        raise ArchiveError("The archive is empty: it contains no files.")
    return entries


def _next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except ArchiveError:
        raise
    except (tarfile.TarError, ValueError, OverflowError) as exc:
        raise ArchiveError(f"The archive is corrupt or truncated ({exc}).") from exc


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveError(f"Archive member {name!r} has a name that is not valid UTF-8.") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ArchiveError(f"Archive member {name!r} has control characters in its name.")
    if "\\" in name:
        raise ArchiveError(f"Archive member {name!r} has a backslash in its name.")
    if name.startswith("/"):
        raise ArchiveError(f"Archive member {name!r} has an absolute path.")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(
            f"Archive member {name!r} has a '..' component and would escape the task directory."
        )
    if len(encoded) > _MAX_PATH_BYTES or any(len(p.encode()) > _MAX_COMPONENT_BYTES for p in parts):
        raise ArchiveError(f"Archive member {name!r} has a name that is too long.")
    return parts


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return f"of unsupported type {member.type!r}"


def _too_big(name: str, limit: int) -> ArchiveError:
    return ArchiveError(
        f"Archive member {name!r} takes the unpacked task over the limit of {limit} bytes.", 413
    )


def _make_dirs(root: Path, parts: tuple[str, ...], dirs: set[tuple[str, ...]]) -> None:
    for i in range(1, len(parts) + 1):
        prefix = parts[:i]
        if prefix in dirs:
            continue
        path = root.joinpath(*prefix)
        path.mkdir()
        # Defence in depth: names are already checked and no link is ever created, so every
        # directory on the way is one made here, and each file is opened with O_NOFOLLOW |
        # O_EXCL in one of them. (Resolving each file's path, two realpath walks, was a fifth
        # of an upload's time.)
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise ArchiveError(f"Archive member directory {'/'.join(prefix)!r} is not one.")
        os.chmod(path, 0o755)
        dirs.add(prefix)


def _write_file(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: Path,
    parts: tuple[str, ...],
    budget: int,
    limit: int,
) -> _FileEntry:
    executable = bool(member.mode & 0o111)
    mode = 0o755 if executable else 0o644
    path = root.joinpath(*parts)
    data = tar.extractfile(member)
    assert data is not None  # regular file
    digest = hashlib.sha256()
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with open(fd, "wb") as out:
        os.fchmod(fd, mode)
        while True:
            try:
                chunk = data.read(_CHUNK)
            except ArchiveError:
                raise
            except (tarfile.TarError, ValueError, OverflowError) as exc:
                raise ArchiveError(
                    f"The archive is corrupt or truncated at member {member.name!r} ({exc})."
                ) from exc
            if not chunk:
                break
            written += len(chunk)
            if written > budget:
                raise _too_big(member.name, limit)
            out.write(chunk)
            digest.update(chunk)
    if written != member.size:
        raise ArchiveError(f"The archive is truncated: member {member.name!r} is incomplete.")
    return _FileEntry(parts, executable, digest.hexdigest(), written)


def _task_root(root: Path) -> tuple[Path, str | None]:
    children = list(root.iterdir())
    if len(children) == 1 and children[0].is_dir():
        return children[0], children[0].name
    return root, None


def _check_task_toml(task_root: Path) -> str | None:
    toml_path = task_root / "task.toml"
    if not toml_path.is_file():
        raise ArchiveError(
            "The archive is not a Harbor task: a Harbor task directory needs a task.toml "
            "at its root (either at the archive root or inside a single top-level folder).",
            422,
        )
    try:
        with toml_path.open("rb") as f:
            config = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"Archive member 'task.toml' is not valid TOML: {exc}.", 422) from exc
    task_section = config.get("task")
    name = task_section.get("name") if isinstance(task_section, dict) else None
    if not isinstance(name, str):
        name = config.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    return None


def _content_hash(entries: list[_FileEntry]) -> str:
    h = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.parts):
        rel = "/".join(entry.parts)
        h.update(f"{rel}\0{int(entry.executable)}\0{entry.digest}\n".encode())
    return h.hexdigest()
