"""oddish.archives: unpacking uploaded task archives (no services needed)."""

from __future__ import annotations

import gzip
import io
import shutil
import stat
import tarfile
import time
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from oddish import archives as archive
from oddish.archives import ArchiveError, ExtractedTask, extract_task_archive

MB = 1024 * 1024
LIMITS = {"max_archive_bytes": 10 * MB, "max_unpacked_bytes": 10 * MB}

TASK_FILES: dict[str, tuple[bytes, int]] = {
    "task.toml": (b'schema_version = "1.4"\n[verifier]\ntimeout_sec = 60.0\n', 0o644),
    "instruction.md": (b"Print hello.\n", 0o644),
    "environment/Dockerfile": (b"FROM ubuntu:24.04\n", 0o600),
    "tests/test.sh": (b"#!/bin/bash\nexit 0\n", 0o755),
    "solution/solve.sh": (b"#!/bin/bash\necho hello\n", 0o700),
}


@dataclass
class M:
    """One archive member for the builder."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    mtime: int = 1_700_000_000
    uid: int = 0


def tar_bytes(members: list[M]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.mode = m.mode
            info.mtime = m.mtime
            info.uid = m.uid
            info.linkname = m.linkname
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def targz(members: list[M]) -> bytes:
    return gzip.compress(tar_bytes(members))


def task_members(
    prefix: str = "", *, mtime: int = 1_700_000_000, uid: int = 0, reverse: bool = False
) -> list[M]:
    items = list(TASK_FILES.items())
    if reverse:
        items.reverse()
    members = [
        M(f"{prefix}{name}", data, mode=mode, mtime=mtime, uid=uid) for name, (data, mode) in items
    ]
    return members


def extract(data: bytes | Path, target: Path, **limits: int) -> ExtractedTask:
    source = data if isinstance(data, Path) else io.BytesIO(data)
    return extract_task_archive(source, target, **{**LIMITS, **limits})


def refused(data: bytes, target: Path, **limits: int) -> ArchiveError:
    with pytest.raises(ArchiveError) as info:
        extract(data, target, **limits)
    return info.value


def assert_nothing_left(tmp_path: Path) -> None:
    """The target's parent holds nothing (no target, no staging dir), and nothing escaped."""
    leftovers = [p for p in tmp_path.rglob("*") if p != tmp_path / "tasks"]
    assert leftovers == []


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "tasks" / "t1"


# --- accepted archives -------------------------------------------------------------------------


def test_files_at_root(target: Path) -> None:
    result = extract(targz(task_members()), target)

    assert result.path == target
    assert result.name == "task"
    assert result.files == len(TASK_FILES)
    assert result.unpacked_bytes == sum(len(d) for d, _ in TASK_FILES.values())
    for name, (data, _) in TASK_FILES.items():
        assert (target / name).read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["t1"]  # staging dir removed


def test_modes_keep_only_the_executable_bit(target: Path) -> None:
    extract(targz(task_members()), target)

    def mode(rel: str) -> int:
        return stat.S_IMODE((target / rel).stat().st_mode)

    assert mode("tests/test.sh") == 0o755
    assert mode("solution/solve.sh") == 0o755
    assert mode("task.toml") == 0o644
    assert mode("environment/Dockerfile") == 0o644
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert mode("tests") == 0o755


def test_single_top_level_folder_is_stripped_and_hash_is_stable(tmp_path: Path) -> None:
    at_root = extract(targz(task_members()), tmp_path / "a")
    members = [
        M("my-task", type=tarfile.DIRTYPE, mode=0o700),
        *task_members("my-task/", mtime=42, uid=1000, reverse=True),
    ]
    in_folder = extract(targz(members), tmp_path / "b")

    assert in_folder.name == "my-task"
    assert in_folder.path == tmp_path / "b"
    assert (tmp_path / "b" / "task.toml").is_file()
    assert not (tmp_path / "b" / "my-task").exists()
    assert in_folder.content_hash == at_root.content_hash
    assert in_folder.files == at_root.files
    assert in_folder.unpacked_bytes == at_root.unpacked_bytes


def test_dot_slash_names_as_made_by_tar_c_dir_dot(tmp_path: Path) -> None:
    members = [M(".", type=tarfile.DIRTYPE), *task_members("./")]
    result = extract(targz(members), tmp_path / "a")
    assert result.name == "task"
    assert result.content_hash == extract(targz(task_members()), tmp_path / "b").content_hash


def test_hash_depends_on_content_paths_and_executable_bit(tmp_path: Path) -> None:
    base = extract(targz(task_members()), tmp_path / "a").content_hash

    changed = task_members()
    changed[1] = M("instruction.md", b"Print goodbye.\n")
    assert extract(targz(changed), tmp_path / "b").content_hash != base

    not_exec = [M(m.name, m.data, mode=0o644) for m in task_members()]
    assert extract(targz(not_exec), tmp_path / "c").content_hash != base

    moved = [
        *task_members()[:-1],
        M("solution/run.sh", TASK_FILES["solution/solve.sh"][0], mode=0o755),
    ]
    assert extract(targz(moved), tmp_path / "d").content_hash != base


def test_name_from_task_toml(tmp_path: Path) -> None:
    members = [M("task.toml", b'[task]\nname = "hello-world"\n'), M("instruction.md", b"hi\n")]
    assert extract(targz(members), tmp_path / "a").name == "hello-world"
    members = [M("task.toml", b'name = "flat"\n'), M("instruction.md", b"hi\n")]
    assert extract(targz(members), tmp_path / "b").name == "flat"


def test_path_source_and_existing_empty_target(tmp_path: Path) -> None:
    upload = tmp_path / "upload.tar.gz"
    upload.write_bytes(targz(task_members()))
    target = tmp_path / "tasks" / "t1"
    target.mkdir(parents=True)
    result = extract(upload, target)
    assert (target / "task.toml").is_file()
    assert result.files == len(TASK_FILES)


def test_non_empty_target_is_a_caller_error(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "old").write_text("x")
    with pytest.raises(FileExistsError):
        extract(targz(task_members()), target)
    assert (target / "old").read_text() == "x"


# --- refusals ----------------------------------------------------------------------------------

GOOD = task_members()

REFUSALS: list[tuple[str, list[M], int, str]] = [
    ("absolute", [*GOOD, M("/tmp/evil", b"x")], 400, "'/tmp/evil' has an absolute path"),
    ("dotdot", [*GOOD, M("../evil", b"x")], 400, "'../evil' has a '..' component"),
    ("deep dotdot", [*GOOD, M("../../evil", b"x")], 400, "'../../evil'"),
    ("inner dotdot", [*GOOD, M("tests/../../evil", b"x")], 400, "'tests/../../evil'"),
    ("backslash", [*GOOD, M("..\\evil", b"x")], 400, "backslash"),
    (
        "symlink",
        [*GOOD, M("tests/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        400,
        "'tests/link' is a symbolic link",
    ),
    (
        "hardlink",
        [*GOOD, M("hard", type=tarfile.LNKTYPE, linkname="task.toml")],
        400,
        "'hard' is a hard link",
    ),
    ("chardev", [*GOOD, M("dev", type=tarfile.CHRTYPE)], 400, "'dev' is a character device"),
    ("blockdev", [*GOOD, M("blk", type=tarfile.BLKTYPE)], 400, "'blk' is a block device"),
    ("fifo", [*GOOD, M("pipe", type=tarfile.FIFOTYPE)], 400, "'pipe' is a FIFO"),
    (
        "duplicate",
        [*GOOD, M("instruction.md", b"again")],
        400,
        "'instruction.md' appears more than once",
    ),
    (
        "duplicate normalised",
        [*GOOD, M("./tests//test.sh", b"again")],
        400,
        "'./tests//test.sh' appears more than once",
    ),
    (
        "file then child",
        [*GOOD, M("instruction.md/x", b"x")],
        400,
        "'instruction.md/x' is inside 'instruction.md'",
    ),
    (
        "dir then file",
        [M("docs", type=tarfile.DIRTYPE), *GOOD, M("docs/", b"x")],
        400,
        "'docs/' appears more than once",
    ),
    (
        "implied dir then file",
        [*GOOD, M("tests", b"x")],
        400,
        "'tests' is both a file and a directory",
    ),
    ("no members", [], 400, "empty"),
    (
        "only directories",
        [M("a", type=tarfile.DIRTYPE), M("a/b", type=tarfile.DIRTYPE)],
        400,
        "empty",
    ),
    ("no task.toml", [M("instruction.md", b"hi")], 422, "needs a task.toml"),
    (
        "task.toml too deep",
        [M("x/y/task.toml", b""), M("x/instruction.md", b"hi")],
        422,
        "task.toml",
    ),
    ("two top-level folders", [*task_members("a/"), M("b/readme", b"")], 422, "task.toml"),
    (
        "task.toml is a dir",
        [M("task.toml", type=tarfile.DIRTYPE), M("instruction.md", b"hi")],
        422,
        "task.toml",
    ),
    (
        "bad toml",
        [M("task.toml", b"[task\nname = "), M("instruction.md", b"hi")],
        422,
        "'task.toml' is not valid TOML",
    ),
    (
        "toml not utf-8",
        [M("task.toml", b"name = '\xff'\n"), M("instruction.md", b"hi")],
        422,
        "'task.toml' is not valid TOML",
    ),
]


@pytest.mark.parametrize(
    ("members", "status", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals(
    tmp_path: Path, target: Path, members: list[M], status: int, message: str
) -> None:
    error = refused(targz(members), target)
    assert error.status_code == status
    assert message in str(error)
    assert_nothing_left(tmp_path)


def test_refusal_leaves_existing_empty_target_empty(tmp_path: Path, target: Path) -> None:
    target.mkdir(parents=True)
    refused(targz([*GOOD, M("../evil", b"x")]), target)
    assert target.is_dir() and list(target.iterdir()) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["t1"]


def test_escape_attempts_create_nothing_outside(tmp_path: Path) -> None:
    # The malicious member comes first, so nothing of the task has been written yet either.
    for i, name in enumerate(["../evil", "../../evil", "../../../evil", "/tmp/evil-oddish-test"]):
        target = tmp_path / "tasks" / f"t{i}"
        refused(targz([M(name, b"pwned"), *GOOD]), target)
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "tasks" / "evil").exists()
    assert not Path("/tmp/evil-oddish-test").exists()
    assert_nothing_left(tmp_path)


def test_too_many_members(tmp_path: Path, target: Path) -> None:
    members = [*GOOD, *(M(f"extra/{i}", b"") for i in range(10))]
    error = refused(targz(members), target, max_members=len(GOOD) + 5)
    assert error.status_code == 413
    assert "more than the limit of" in str(error)
    assert_nothing_left(tmp_path)
    # Directory entries count too; exactly at the limit is fine.
    assert extract(targz(GOOD), target, max_members=len(GOOD)).files == len(GOOD)


def test_unpacked_size_limit(tmp_path: Path, target: Path) -> None:
    members = [*GOOD, M("environment/blob", b"x" * 2000)]
    error = refused(targz(members), target, max_unpacked_bytes=1500)
    assert error.status_code == 413
    assert "'environment/blob'" in str(error)
    assert_nothing_left(tmp_path)


def test_archive_size_limit_reads_at_most_limit_plus_one(tmp_path: Path, target: Path) -> None:
    import os

    data = targz([*GOOD, M("noise", os.urandom(50_000))])

    class Counting(io.BytesIO):
        read_total = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            self.read_total += len(chunk)
            return chunk

    source = Counting(data)
    with pytest.raises(ArchiveError) as info:
        extract_task_archive(source, target, max_archive_bytes=10_000, max_unpacked_bytes=MB)
    assert info.value.status_code == 413
    assert "larger than the limit of 10000 bytes" in str(info.value)
    assert source.read_total <= 10_001
    assert_nothing_left(tmp_path)

    upload = tmp_path / "upload.tar.gz"
    upload.write_bytes(data)
    with pytest.raises(ArchiveError) as info:
        extract_task_archive(upload, target, max_archive_bytes=10_000, max_unpacked_bytes=MB)
    assert info.value.status_code == 413


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not an archive at all" * 10, "not a gzip"),
        (tar_bytes(GOOD), "not a gzip"),
        (gzip.compress(b""), "empty"),
        (
            gzip.compress(b"plain text, not a tar archive\n" * 100),
            "not contain a valid tar archive",
        ),
    ],
    ids=["zero bytes", "garbage", "uncompressed tar", "empty gzip", "gzip of text"],
)
def test_not_a_targz(tmp_path: Path, target: Path, data: bytes, message: str) -> None:
    error = refused(data, target)
    assert error.status_code == 400
    assert message in str(error)
    assert_nothing_left(tmp_path)


def test_truncated_and_corrupt_archives(tmp_path: Path) -> None:
    import os

    data = targz([*GOOD, M("environment/noise", os.urandom(20_000))])
    cuts = [20, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 4, len(data) - 1]
    for i, cut in enumerate(cuts):
        error = refused(data[:cut], tmp_path / "tasks" / f"cut{i}")
        assert error.status_code == 400, cut
        assert "truncated" in str(error) or "corrupt" in str(error), (cut, str(error))

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    error = refused(bytes(flipped), tmp_path / "tasks" / "flipped")
    assert error.status_code == 400

    bad_crc = bytearray(data)
    bad_crc[-8] ^= 0xFF
    error = refused(bytes(bad_crc), tmp_path / "tasks" / "crc")
    assert error.status_code == 400 and "corrupt" in str(error)

    error = refused(data + b"trailing garbage", tmp_path / "tasks" / "trailing")
    assert error.status_code == 400
    assert_nothing_left(tmp_path)


def _zeros_archive(members: list[tuple[str, int]]) -> bytes:
    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros(size)))
            for m in GOOD:
                info = tarfile.TarInfo(m.name)
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    return buf.getvalue()


def _spy_on_cleanup(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many bytes the staging directory held when it was removed."""
    sizes: list[int] = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(archive.shutil, "rmtree", rmtree)
    return sizes


@pytest.mark.parametrize(
    "members",
    [
        [("environment/zeros.bin", 50 * MB)],
        [(f"environment/zeros{i}.bin", MB // 2) for i in range(100)],
    ],
    ids=["one 50 MB member", "100 half-MB members"],
)
def test_gzip_bomb(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch, members: list[tuple[str, int]]
) -> None:
    bomb = _zeros_archive(members)
    assert len(bomb) < 300_000
    written = _spy_on_cleanup(monkeypatch)

    started = time.monotonic()
    error = refused(bomb, target, max_unpacked_bytes=MB)
    elapsed = time.monotonic() - started

    assert error.status_code == 413
    assert "environment/zeros" in str(error)
    assert elapsed < 2.0
    assert written and written[0] <= MB
    assert_nothing_left(tmp_path)


# --- per-file bound and tar header bounds ------------------------------------------------------


def _block(info: tarfile.TarInfo) -> bytes:
    """One raw 512-byte ustar header, whatever its type and declared size."""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def _header(name: str, type: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = size
    info.mode = 0o644
    return _block(info)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _pax_record(keyword: str, value: str) -> bytes:
    body = f" {keyword}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _good_members_tar() -> bytes:
    """The task's files, then the end-of-archive blocks."""
    return tar_bytes(GOOD)


def test_a_file_over_the_per_file_limit_is_refused_from_its_header(
    tmp_path: Path, target: Path
) -> None:
    data = targz([*GOOD, M("environment/big.bin", b"x" * (2 * MB))])
    error = refused(data, target, max_file_bytes=MB)
    assert error.status_code == 413
    assert "environment/big.bin" in str(error) and "per file" in str(error)
    assert_nothing_left(tmp_path)
    # Declared 400 MB, with no data behind the header: refused from the header, not as truncated.
    raw = _header("environment/huge.bin", tarfile.REGTYPE, 400 * MB)
    error = refused(gzip.compress(raw), target, max_unpacked_bytes=500 * MB, max_file_bytes=MB)
    assert error.status_code == 413 and "per file" in str(error), error
    assert extract(targz(GOOD), target, max_file_bytes=MB).files == len(GOOD)


def test_a_300_mib_pax_header_is_refused_unread(tmp_path: Path, target: Path) -> None:
    """tarfile would read the header whole (1.16 GB of memory before); refused from its block."""
    size = 300 * MB
    archive_path = tmp_path / "pax-bomb.tar.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    chunk = bytes(MB)
    with archive_path.open("wb") as out:
        out.write(compressor.compress(_header("././@PaxHeader", tarfile.XHDTYPE, size)))
        for _ in range(size // MB):
            out.write(compressor.compress(chunk))
        out.write(compressor.compress(_good_members_tar()))
        out.write(compressor.flush())
    assert archive_path.stat().st_size < 1 * MB
    limits = {"max_archive_bytes": 100 * MB, "max_unpacked_bytes": 500 * MB}

    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as info:
            extract_task_archive(archive_path, target, **limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status_code == 413 and "extended header" in str(info.value)
    assert peak < 4 * MB, f"peak {peak / MB:.1f} MiB"
    assert list((tmp_path / "tasks").iterdir()) == []


def test_a_gnu_long_name_over_the_header_limit_is_refused(tmp_path: Path, target: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("a" * (2 * MB))
        tar.addfile(info, io.BytesIO())
    error = refused(gzip.compress(buf.getvalue()), target)
    assert error.status_code == 413 and "extended header" in str(error)
    # Within the bound it reaches the name checks, which refuse a 4 KiB+ path with the reason.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("d/" * 3000 + "f"), io.BytesIO())
    assert "too long" in str(refused(gzip.compress(buf.getvalue()), target))
    assert_nothing_left(tmp_path)


def test_a_chain_of_pax_headers_is_refused_without_recursing(target: Path) -> None:
    """Zero-sized headers cost nothing to read, but each is a level of recursion in tarfile:
    5,000 of them were a RecursionError (a 500)."""
    chain = _header("././@PaxHeader", tarfile.XHDTYPE, 0) * 5000
    error = refused(gzip.compress(chain + _good_members_tar()), target)
    assert "extended headers" in str(error) and error.status_code == 400


def test_pax_global_headers_are_bounded(tmp_path: Path, target: Path) -> None:
    # git archive writes one, with the commit id: accepted.
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "a" * 40}
    ) as tar:
        for m in GOOD:
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data))
    assert extract(gzip.compress(buf.getvalue()), target).files == len(GOOD)
    # Global keywords are copied to every later member: their total is kept small.
    record = _pax_record("comment", "x" * 1000)
    one = _header("pax_global_header", tarfile.XGLTYPE, len(record)) + _padded(record)
    error = refused(gzip.compress(one * 8 + _good_members_tar()), tmp_path / "tasks" / "g")
    assert error.status_code == 413 and "global" in str(error)


def test_pax_headers_of_many_members_are_not_kept(target: Path) -> None:
    """tarfile keeps each member it read with its pax headers; 3,000 members of 4 KiB headers
    held 12 MiB to the end of the archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in GOOD:
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data))
        for i in range(3000):
            info = tarfile.TarInfo(f"environment/d{i}")
            info.type = tarfile.DIRTYPE
            info.pax_headers = {"comment": f"{i:06d}" + "y" * 4096}
            tar.addfile(info)
    data = gzip.compress(buf.getvalue())
    tracemalloc.start()
    try:
        extract(data, target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * MB, f"peak {peak / MB:.1f} MiB"


def test_sparse_files_are_refused_before_their_maps_are_read(tmp_path: Path) -> None:
    # A GNU 'S' member whose extension blocks go on to the end of the archive: tarfile read all
    # of them, then failed with an IndexError (a 500).
    info = tarfile.TarInfo("environment/sparse.bin")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[482] = 1  # isextended
    header[148:156] = b"        "
    header[148:155] = f"{sum(header):06o}\0".encode()
    extension = bytearray(tarfile.BLOCKSIZE)
    extension[504] = 1
    data = gzip.compress(bytes(header) + bytes(extension) * 50_000)
    error = refused(data, tmp_path / "tasks" / "s1")
    assert "sparse" in str(error)
    # pax GNU.sparse 1.0: the map is in the member's data, which tarfile would read line by line.
    records = b"".join(
        _pax_record(k, v)
        for k, v in (("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("path", "x"))
    )
    member = _header("environment/GNUSparseFile.0/x", tarfile.REGTYPE, 512)
    data = (
        _header("././@PaxHeader", tarfile.XHDTYPE, len(records))
        + _padded(records)
        + member
        + _padded(b"2\nnot a number\n")
        + bytes(1024)
    )
    error = refused(gzip.compress(data), tmp_path / "tasks" / "s2")
    assert "sparse" in str(error)
    assert_nothing_left(tmp_path)


def test_the_tarfile_hooks_overridden_still_exist() -> None:
    """_BoundedTarInfo overrides tarfile internals by name: a Python that renames them fails
    here rather than silently reading unbounded headers."""
    for name in ("_proc_member", "_proc_gnusparse_00", "_proc_gnusparse_01", "_proc_gnusparse_10"):
        assert callable(getattr(tarfile.TarInfo, name, None)), name
