"""oddish.storage: the one contract of both backends, a local directory and S3 (moto's server in
a process of its own), plus what is each backend's own: the local store never touches anything
outside its root, S3's errors name the setting to fix."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from oddish.config import Settings, get_settings
from oddish.storage import (
    BaseStorage,
    LocalStorageConfig,
    ObjectInfo,
    ObjectNotFound,
    S3StorageConfig,
    StorageConfig,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
    config_from_settings,
    get_storage,
    reset_storage,
    storage_from_config,
    storage_from_settings,
)
from oddish.storage import _fs as storage_fs
from oddish.storage import keys as storage_keys
from oddish.storage.local import LocalStorage
from oddish.storage.s3 import S3Storage, make_client, normalize_prefix, transfer_config
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (the fixture)

MB = 1024 * 1024
S3_PREFIX = "deploy/one"  # normalised to "deploy/one/"


_clients: dict[str, Any] = {}


def s3_store(server: S3Server, **options: Any) -> S3Storage:
    """A store on a new bucket of the server, through a client as oddish makes them (one for
    the module: building a client loads botocore's S3 model, a few hundred milliseconds)."""
    if server.endpoint not in _clients:
        _clients[server.endpoint] = make_client(
            endpoint_url=server.endpoint,
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
            max_attempts=2,
        )
    return S3Storage(server.create_bucket(), S3_PREFIX, _clients[server.endpoint], **options)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BaseStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the local store's root that nothing may touch."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret.txt").write_text("SECRET")
    return place


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every MiB differs (a misplaced part shows)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MB // 32)
    out = bytearray()
    for i in range(0, size, MB):
        out += bytes([i // MB % 251]) + block[1 : min(MB, size - i)]
    return bytes(out[:size])


def write_big(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for i in range(0, size, MB):
            chunk = pattern(min(MB, size - i), seed=i)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def piped(data: bytes) -> tuple[int, threading.Thread]:
    """The read end of a pipe that a thread fills with ``data`` (a stream of unknown length)."""
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    return read_end, writer


def stream_digest(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


# --- round trips -------------------------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(storage: BaseStorage, tmp_path: Path) -> None:
    assert storage.put_bytes("tasks/t1/a.txt", b"hello") == ObjectInfo("tasks/t1/a.txt", 5)
    assert b"".join(storage.iter_bytes("tasks/t1/a.txt")) == b"hello"
    assert storage.stat("tasks/t1/a.txt") == ObjectInfo("tasks/t1/a.txt", 5)
    storage.put_bytes("tasks/t1/a.txt", b"replaced, longer")
    assert b"".join(storage.iter_bytes("tasks/t1/a.txt")) == b"replaced, longer"
    assert storage.put_bytes("empty", b"") == ObjectInfo("empty", 0)
    assert list(storage.iter_bytes("empty")) == []
    assert storage.get_file("empty", tmp_path / "empty") == ObjectInfo("empty", 0)
    assert (tmp_path / "empty").read_bytes() == b""
    # Keys are text: anything UTF-8 but control characters and backslashes.
    storage.put_bytes("ünï cödé/ 空 白 .txt", b"x")
    assert [i.key for i in storage.list("ünï cödé/")] == ["ünï cödé/ 空 白 .txt"]


def test_file_round_trip_is_atomic(storage: BaseStorage, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    digest = write_big(source, 3 * MB + 17)
    assert storage.put_file("a/b/file.bin", source) == ObjectInfo("a/b/file.bin", 3 * MB + 17)
    target = tmp_path / "down" / "deeper" / "file.bin"
    target.parent.mkdir(parents=True)
    target.write_text("old")
    assert storage.get_file("a/b/file.bin", target).size == 3 * MB + 17
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert os.listdir(target.parent) == ["file.bin"]  # no temporary file left
    # A missing object leaves the destination as it was, and no temporary file.
    with pytest.raises(ObjectNotFound):
        storage.get_file("a/b/missing.bin", target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert os.listdir(target.parent) == ["file.bin"]
    # The parent directory is created.
    storage.get_file("a/b/file.bin", tmp_path / "new" / "dir" / "f")
    assert (tmp_path / "new" / "dir" / "f").stat().st_size == 3 * MB + 17


def test_put_file_refuses_a_link_or_special_file(storage: BaseStorage, tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        storage.put_file("k", tmp_path / "link")
    with pytest.raises(OSError):
        storage.put_file("k", tmp_path / "fifo")  # refused, without blocking on it
    with pytest.raises(ObjectNotFound):
        storage.stat("k")


def test_a_twenty_mib_file_goes_up_in_parts(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3_server, transfer=transfer_config(threshold=5 * MB, chunksize=5 * MB))
    source = tmp_path / "big.bin"
    digest = write_big(source, 20 * MB)
    started = time.monotonic()
    assert store.put_file("big.bin", source) == ObjectInfo("big.bin", 20 * MB)
    head = store.client.head_object(Bucket=store.bucket, Key=f"{S3_PREFIX}/big.bin")
    assert head["ETag"].strip('"').endswith("-4"), head["ETag"]  # four 5 MiB parts
    assert stream_digest(store.iter_bytes("big.bin")) == digest
    store.get_file("big.bin", tmp_path / "back.bin")
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    # From a file object's position, and from a stream of unknown length, in parts too.
    with open(source, "rb") as fileobj:
        fileobj.seek(7 * MB + 3)
        assert store.put_fileobj("tail.bin", fileobj).size == 13 * MB - 3
    tail = source.read_bytes()[7 * MB + 3 :]
    assert b"".join(store.iter_bytes("tail.bin")) == tail
    read_end, writer = piped(tail)
    with os.fdopen(read_end, "rb") as pipe:
        assert store.put_fileobj("piped.bin", pipe).size == len(tail)
    writer.join()
    assert b"".join(store.iter_bytes("piped.bin")) == tail
    for key in ("tail.bin", "piped.bin"):
        etag = store.client.head_object(Bucket=store.bucket, Key=f"{S3_PREFIX}/{key}")["ETag"]
        assert etag.strip('"').endswith("-3"), (key, etag)
    assert time.monotonic() - started < 15


def test_put_fileobj_reads_from_the_position_seekable_or_not(
    storage: BaseStorage, tmp_path: Path
) -> None:
    data = pattern(2 * MB + 5)
    seekable = io.BytesIO(b"HEADER" + data)
    seekable.seek(6)
    assert storage.put_fileobj("seekable", seekable) == ObjectInfo("seekable", len(data))
    assert b"".join(storage.iter_bytes("seekable")) == data

    read_end, writer = piped(data)
    with os.fdopen(read_end, "rb") as pipe:
        assert storage.put_fileobj("piped", pipe) == ObjectInfo("piped", len(data))
    writer.join()
    assert b"".join(storage.iter_bytes("piped")) == data

    out = io.BytesIO()
    assert storage.get_fileobj("piped", out) == ObjectInfo("piped", len(data))
    assert out.getvalue() == data


def test_a_failed_write_leaves_no_object(storage: BaseStorage, tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if self.sent > MB:
                raise OSError("disk on fire")
            buffer[:] = b"x" * len(buffer)
            self.sent += len(buffer)
            return len(buffer)

    with pytest.raises((OSError, StorageError)):
        storage.put_fileobj("broken", io.BufferedReader(Broken()))
    with pytest.raises(ObjectNotFound):
        storage.stat("broken")
    if isinstance(storage, LocalStorage):
        assert os.listdir(storage.root / "tmp") == []


# --- ranges, memory ----------------------------------------------------------------------------

RANGES = [
    (0, None),
    (0, 1),
    (1, 10),
    (10, 10),
    (99_990, None),
    (99_990, 200_000),  # cut short at the end
    (100_000, None),  # just past the end: nothing
    (150_000, 160_000),  # past the end: nothing
    (12_345, 67_890),
]


def test_ranged_reads_match_slices(storage: BaseStorage) -> None:
    data = pattern(100_000)
    storage.put_bytes("r/data", data)
    for start, end in RANGES:
        chunks = list(storage.iter_bytes("r/data", chunk_size=4096, start=start, end=end))
        assert b"".join(chunks) == data[start:end], (start, end)
        assert all(len(c) <= 4096 for c in chunks)
    for bad in ({"start": -1}, {"start": 5, "end": 4}, {"chunk_size": 0}):
        with pytest.raises(ValueError):
            storage.iter_bytes("r/data", **bad)


def test_missing_objects_are_object_not_found_before_any_byte(
    storage: BaseStorage, tmp_path: Path
) -> None:
    storage.put_bytes("there/x", b"x")
    for key in ("missing", "there/missing", "there", "there/x/below"):
        with pytest.raises(ObjectNotFound):
            storage.stat(key)
        with pytest.raises(ObjectNotFound):
            storage.iter_bytes(key)  # raised by the call itself, not by the first next()
        with pytest.raises(ObjectNotFound):
            storage.iter_bytes(key, start=3, end=3)
        with pytest.raises(ObjectNotFound):
            storage.get_fileobj(key, io.BytesIO())
    assert not (tmp_path / "nothing").exists()


def test_streaming_a_64_mib_object_holds_little_memory(
    storage: BaseStorage, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    digest = write_big(source, 64 * MB)
    peaks = {}
    tracemalloc.start()
    try:
        storage.put_file("big/object.bin", source)
        _, peaks["put_file"] = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert stream_digest(storage.iter_bytes("big/object.bin")) == digest
        _, peaks["iter_bytes"] = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        storage.get_file("big/object.bin", tmp_path / "back.bin")
        _, peaks["get_file"] = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(peak < 12 * MB for peak in peaks.values()), {
        name: f"{peak / MB:.1f} MiB" for name, peak in peaks.items()
    }


# --- listing, deleting -------------------------------------------------------------------------


def test_list_is_recursive_sorted_and_bounded_by_prefix(storage: BaseStorage) -> None:
    keys = ["a/b", "a-c", "a0", "a/b-c/d", "a/b/c", "tasks/1/x", "tasks/10/y", "tasks/1/z/w"]
    # "a/b" the object and "a/b/c" below it cannot both exist as files: not in the local store.
    if isinstance(storage, LocalStorage):
        keys.remove("a/b")
    for i, key in enumerate(keys):
        storage.put_bytes(key, b"x" * i)
    listed = list(storage.list())
    assert [i.key for i in listed] == sorted(keys)
    assert {i.key: i.size for i in listed} == {k: i for i, k in enumerate(keys)}
    assert [i.key for i in storage.list("tasks/1/")] == ["tasks/1/x", "tasks/1/z/w"]
    assert [i.key for i in storage.list("a/")] == sorted(k for k in keys if k.startswith("a/"))
    assert list(storage.list("nothing/here/")) == []
    assert list(storage.list("a0/")) == []  # an object is no prefix
    with pytest.raises(ValueError):
        list(storage.list("tasks/1"))  # a prefix ends with '/'


def test_list_and_delete_page_through_s3(s3_server: S3Server) -> None:
    store = s3_store(s3_server, page_size=7)
    calls: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        if params.get("Bucket") == store.bucket:
            calls.append(params.get("ContinuationToken", "first"))

    store.client.meta.events.register("before-parameter-build.s3.ListObjectsV2", count)
    keys = sorted(f"p/{i:03d}/k" for i in range(30))
    for key in keys:
        store.put_bytes(key, b"")
    assert [i.key for i in store.list("p/")] == keys
    assert len(calls) == 5  # ceil(30 / 7)
    assert store.delete_prefix("p/") == 30
    store.client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", count)
    assert list(store.list()) == []


def test_delete_prefix(storage: BaseStorage) -> None:
    for key in ("tasks/1/a", "tasks/1/b/c", "tasks/1/b/d/e", "tasks/10/a", "tasks/2"):
        storage.put_bytes(key, b"data")
    assert storage.delete_prefix("tasks/1/") == 3
    assert [i.key for i in storage.list()] == ["tasks/10/a", "tasks/2"]
    assert storage.delete_prefix("tasks/1/") == 0
    assert storage.delete_prefix("never/was/") == 0
    assert storage.delete_prefix("tasks/2/") == 0  # an object, not a prefix
    with pytest.raises(ValueError):
        storage.delete_prefix("")  # never everything at once
    with pytest.raises(ValueError):
        storage.delete_prefix("tasks/10")
    assert [i.key for i in storage.list()] == ["tasks/10/a", "tasks/2"]
    # A key can be written again under a deleted prefix.
    storage.put_bytes("tasks/1/again", b"x")
    assert storage.stat("tasks/1/again").size == 1


# --- keys --------------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/abs",
    "..",
    ".",
    "../up",
    "a/../../up",
    "a/./b",
    "a//b",
    "a/",
    "nul\x00byte",
    "back\\slash",
    "..\\..\\up",
    "new\nline",
    "x" * 1025,
    "é" * 513,  # 1026 bytes
    "a/" + "b" * 256,
    "surrogate\udcff",
]
BAD_PREFIXES = ["a", "/a/", "../", "a/../", "a//", "./", "a\\b/", "x" * 1024 + "/"]


def test_bad_keys_are_refused_everywhere(
    storage: BaseStorage, tmp_path: Path, outside: Path
) -> None:
    source = tmp_path / "source"
    source.write_text("data")
    for key in BAD_KEYS:
        refused_everywhere(storage, key, source, tmp_path / "target")
    assert list(storage.list()) == []
    assert snapshot(outside) == {"secret.txt": b"SECRET"}
    assert not (tmp_path / "target").exists()
    if isinstance(storage, LocalStorage):
        assert not (storage.root / "objects").exists() or not os.listdir(storage.root / "objects")


def refused_everywhere(storage: BaseStorage, key: str, source: Path, target: Path) -> None:
    calls = [
        lambda: storage.put_bytes(key, b"data"),
        lambda: storage.put_fileobj(key, io.BytesIO(b"data")),
        lambda: storage.put_file(key, source),
        lambda: storage.get_file(key, target),
        lambda: storage.get_fileobj(key, io.BytesIO()),
        lambda: storage.iter_bytes(key),
        lambda: storage.stat(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_bad_prefixes_are_refused_everywhere(storage: BaseStorage, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")
    for prefix in BAD_PREFIXES:
        with pytest.raises(ValueError):
            list(storage.list(prefix))
        with pytest.raises(ValueError):
            storage.delete_prefix(prefix)
        with pytest.raises(ValueError):
            storage.put_tree(prefix, tree)
        with pytest.raises(ValueError):
            storage.get_tree(prefix, tmp_path / "down")
    assert list(storage.list()) == []
    assert not (tmp_path / "down").exists()


def test_key_layout() -> None:
    assert storage_keys.task_prefix("t-1") == "tasks/t-1/"
    assert storage_keys.task_archive_key("t-1", "ab12") == "tasks/t-1/ab12.tar.gz"
    assert storage_keys.trial_output_prefix("t-1", "tr-2", 3) == "tasks/t-1/trials/tr-2/attempt-3/"
    for made in (
        storage_keys.task_prefix("t"),
        storage_keys.trial_output_prefix("t", "r", 1),
    ):
        assert storage_keys.validate_prefix(made) == made
    storage_keys.validate_key(storage_keys.task_archive_key("t", "h"))
    for bad in ("", "a/b", "..", ".", "x\\y"):
        with pytest.raises(ValueError):
            storage_keys.task_prefix(bad)
        with pytest.raises(ValueError):
            storage_keys.task_archive_key("t", bad)
        with pytest.raises(ValueError):
            storage_keys.trial_output_prefix("t", bad, 1)
    for bad_attempt in (-1, True, "1", 1.0):
        with pytest.raises(ValueError):
            storage_keys.trial_output_prefix("t", "r", bad_attempt)  # type: ignore[arg-type]


def test_s3_prefix_normalised() -> None:
    assert normalize_prefix("") == ""
    assert normalize_prefix("/") == ""
    assert normalize_prefix("oddish") == "oddish/"
    assert normalize_prefix("/a/b//") == "a/b/"
    for bad in ("a//b", "a/../b", "a\\b"):
        with pytest.raises(ValueError):
            normalize_prefix(bad)


def test_s3_keys_live_under_the_prefix(s3_server: S3Server) -> None:
    store = s3_store(s3_server)
    store.put_bytes("tasks/t/x", b"1")
    raw = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [item["Key"] for item in raw] == [f"{S3_PREFIX}/tasks/t/x"]
    # Another prefix in the same bucket is another store.
    other = S3Storage(store.bucket, "deploy/two/", store.client)
    assert list(other.list()) == []
    other.put_bytes("tasks/t/x", b"22")
    assert store.stat("tasks/t/x").size == 1 and other.stat("tasks/t/x").size == 2
    assert store.delete_prefix("tasks/") == 1 and other.stat("tasks/t/x").size == 2
    # The prefix counts towards S3's 1024 bytes.
    with pytest.raises(ValueError):
        store.put_bytes("k" * (1024 - len(S3_PREFIX)), b"")
    assert store.describe() == f"s3://{store.bucket}/{S3_PREFIX}/ at {s3_server.endpoint}"


# --- the local store's root is a wall ----------------------------------------------------------


def test_local_store_never_follows_a_planted_link(tmp_path: Path, outside: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    store.check()
    objects = tmp_path / "store" / "objects"
    (objects / "tasks").symlink_to(outside, target_is_directory=True)
    (objects / "secret").symlink_to(outside / "secret.txt")
    store.put_bytes("fine/x", b"x")

    with pytest.raises(StorageError, match="symbolic link"):
        store.put_bytes("tasks/secret.txt", b"OVERWRITTEN")
    with pytest.raises(StorageError, match="symbolic link"):
        store.put_bytes("tasks/new/file", b"x")
    for key in ("tasks/secret.txt", "secret"):
        with pytest.raises(StorageError, match="symbolic link"):
            store.stat(key)
        with pytest.raises(StorageError, match="symbolic link"):
            store.iter_bytes(key)
        with pytest.raises(StorageError, match="symbolic link"):
            store.get_file(key, tmp_path / "copy")
    with pytest.raises(StorageError, match="symbolic link"):
        list(store.list("tasks/"))
    assert [i.key for i in store.list()] == ["fine/x"]  # links are no objects
    with pytest.raises(StorageError, match="symbolic link"):
        store.delete_prefix("tasks/secret.txt/")
    store.delete_prefix("tasks/")  # removes the link itself, never what it points to
    assert not (objects / "tasks").is_symlink()
    # A link planted deeper is removed with its prefix, its target left.
    (objects / "fine" / "deeper").symlink_to(outside, target_is_directory=True)
    assert store.delete_prefix("fine/") == 1
    # Writing over a link planted where an object goes replaces the link.
    store.put_bytes("secret", b"mine")
    assert not (objects / "secret").is_symlink()
    assert snapshot(outside) == {"secret.txt": b"SECRET"}
    assert not (tmp_path / "copy").exists()


def test_local_store_ignores_what_is_no_object(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    store.put_bytes("d/real", b"x")
    os.mkfifo(tmp_path / "store" / "objects" / "d" / "fifo")
    assert [i.key for i in store.list()] == ["d/real"]
    with pytest.raises(StorageError):
        store.stat("d/fifo")  # refused without blocking on it
    assert store.delete_prefix("d/") == 1
    assert os.listdir(tmp_path / "store" / "objects") == []


# --- trees -------------------------------------------------------------------------------------


def make_tree(root: Path, outside: Path) -> dict[str, bytes]:
    """A tree with files, and links and special files that must never be uploaded."""
    files = {
        "result.json": b'{"reward": 1}',
        "agent/log.txt": b"log " * 1000,
        "agent/sub/deep/file.bin": pattern(300_000),
        "verifier/empty": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "agent" / "secret-link").symlink_to(outside / "secret.txt")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "outside-dir").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to(root / "nowhere")
    os.mkfifo(root / "agent" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "verifier" / "sock"))
    return files


def test_put_tree_uploads_regular_files_only(
    storage: BaseStorage, tmp_path: Path, outside: Path
) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree, outside)
    prefix = storage_keys.trial_output_prefix("t", "r", 1)
    uploaded = storage.put_tree(prefix, tree)
    assert [i.key for i in uploaded] == sorted(prefix + rel for rel in files)
    assert {i.key: i.size for i in storage.list(prefix)} == {
        prefix + rel: len(data) for rel, data in files.items()
    }
    for rel, data in files.items():
        assert b"".join(storage.iter_bytes(prefix + rel)) == data
    # Nothing of what the links point to went up.
    everything = b"".join(b"".join(storage.iter_bytes(i.key)) for i in storage.list())
    assert b"SECRET" not in everything and b"root:" not in everything
    # The tree's root itself must not be a link.
    (tmp_path / "tree-link").symlink_to(tree, target_is_directory=True)
    with pytest.raises(OSError):
        storage.put_tree("other/", tmp_path / "tree-link")


def test_move_tree_stores_what_put_tree_would_moving_only_files_of_one_link(
    storage: BaseStorage, tmp_path: Path, outside: Path
) -> None:
    """Locally each file is renamed into place; a file with another link (which would reach
    the stored object) is copied, and so is everything on S3. Links and special files stay."""
    tree = tmp_path / "tree"
    files = make_tree(tree, outside)
    shared = outside / "shared.txt"
    shared.write_bytes(b"shared before")
    os.link(shared, tree / "agent" / "hard.txt")
    files["agent/hard.txt"] = b"shared before"
    prefix = storage_keys.trial_output_prefix("t", "r", 1)

    stored = storage.move_tree(prefix, tree)

    assert [i.key for i in stored] == sorted(prefix + rel for rel in files)
    for rel, data in files.items():
        assert b"".join(storage.iter_bytes(prefix + rel)) == data
    left = {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and not p.is_symlink()}
    if isinstance(storage, LocalStorage):
        assert left == {"agent/hard.txt"}
    else:
        assert left == set(files)
    for rel in ("agent/secret-link", "passwd", "dangling", "agent/fifo", "verifier/sock"):
        assert os.path.lexists(tree / rel), rel
    # The stored copy of the hard-linked file is a copy: the other link cannot reach it.
    shared.write_bytes(b"shared after")
    assert b"".join(storage.iter_bytes(prefix + "agent/hard.txt")) == b"shared before"
    everything = b"".join(b"".join(storage.iter_bytes(i.key)) for i in storage.list())
    assert b"SECRET" not in everything and b"root:" not in everything


def small_tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Three files, two of them in a subdirectory: the directory and its files' contents."""
    tree = tmp_path / "tree"
    files = {"a.txt": b"a", "d/b.txt": b"b", "d/c.txt": b"c"}
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    return tree, files


def test_move_tree_copies_from_another_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, files = small_tree(tmp_path)
    renames: list[str] = []
    real_rename_into = storage_fs.rename_into

    def cross_device(src_dir: int, src_name: str, *args: Any, **kwargs: Any) -> None:
        if src_name.startswith(storage_fs.TEMP_PREFIX):  # a copy, from the store's tmp/
            return real_rename_into(src_dir, src_name, *args, **kwargs)
        renames.append(src_name)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(storage_fs, "rename_into", cross_device)
    storage = LocalStorage(tmp_path / "store")
    assert len(storage.move_tree("pfx/", tree)) == 3
    assert renames == ["a.txt"], "tried once, then copied"
    for rel, data in files.items():
        assert (tree / rel).read_bytes() == data
        assert b"".join(storage.iter_bytes("pfx/" + rel)) == data


@pytest.mark.parametrize("sync_outputs", [False, True])
def test_moved_outputs_are_synced_only_when_the_setting_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_outputs: bool
) -> None:
    """ODDISH_STORAGE_SYNC_OUTPUTS reaches the local store: off, a move syncs nothing (the
    kernel writes the files back); on, each moved file and its directory are synced. An
    archive written through tmp/ is synced either way."""
    monkeypatch.setenv("ODDISH_STORAGE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("ODDISH_STORAGE_SYNC_OUTPUTS", str(sync_outputs).lower())
    storage = storage_from_config(config_from_settings(Settings()))
    assert isinstance(storage, LocalStorage)
    tree, files = small_tree(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    assert len(storage.move_tree("pfx/", tree)) == 3
    assert not any(p.is_file() for p in tree.rglob("*")), "moved, not copied"
    for rel, data in files.items():
        assert b"".join(storage.iter_bytes("pfx/" + rel)) == data
    # A file and its new directory entry for each of the three.
    assert len(synced) == (6 if sync_outputs else 0)
    synced.clear()
    storage.put_bytes("archive", b"archive bytes")
    assert len(synced) == 2


def test_put_tree_of_many_files_and_get_tree_back(storage: BaseStorage, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = {f"d{i % 5}/f{i:03d}.txt": f"file {i}".encode() for i in range(60)}
    for rel, data in expected.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    assert len(storage.put_tree("pfx/", tree)) == 60
    down = tmp_path / "down"
    got = storage.get_tree("pfx/", down)
    assert sorted(i.key for i in got) == sorted("pfx/" + rel for rel in expected)
    assert snapshot(down) == {rel: data for rel, data in expected.items()}
    assert storage.get_tree("none/", tmp_path / "empty") == []


def test_get_tree_never_writes_through_a_link(
    storage: BaseStorage, tmp_path: Path, outside: Path
) -> None:
    storage.put_bytes("p/sub/secret.txt", b"OVERWRITTEN")
    storage.put_bytes("p/file", b"mine")
    down = tmp_path / "down"
    down.mkdir()
    (down / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError, match="symbolic link"):
        storage.get_tree("p/", down)
    assert snapshot(outside) == {"secret.txt": b"SECRET"}
    # A link where a file goes is replaced by the file, its target untouched.
    (down / "sub").unlink()
    (down / "file").unlink(missing_ok=True)  # downloaded before the link stopped the rest
    (down / "file").symlink_to(outside / "secret.txt")
    storage.get_tree("p/", down)
    assert not (down / "file").is_symlink() and (down / "file").read_bytes() == b"mine"
    assert snapshot(outside) == {"secret.txt": b"SECRET"}


@pytest.mark.parametrize(
    "bad", ["p/../../escape", "p//abs", "p/a\\..\\..\\escape", "p/./x", "p/x\x00y"]
)
def test_get_tree_refuses_keys_that_leave_the_directory(
    storage: BaseStorage, tmp_path: Path, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such keys cannot be written through the interface; a listing could still hold them (an
    S3 bucket written by something else): the listing is replaced here."""
    storage.put_bytes("p/good", b"good")
    listed = [ObjectInfo("p/good", 4), ObjectInfo(bad, 4)]
    monkeypatch.setattr(storage, "list", lambda prefix="": iter(listed))
    down = tmp_path / "a" / "b" / "down"
    with pytest.raises(ValueError):
        storage.get_tree("p/", down)
    assert not down.exists() and not (tmp_path / "a" / "escape").exists()


def test_get_tree_refuses_a_real_escaping_key_in_a_bucket(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = s3_store(s3_server)
    store.put_bytes("p/good", b"good")
    store.client.put_object(Bucket=store.bucket, Key=f"{S3_PREFIX}/p/../../../escape", Body=b"x")
    assert "p/../../../escape" in [i.key for i in store.list("p/")]
    down = tmp_path / "one" / "two" / "down"
    with pytest.raises(ValueError):
        store.get_tree("p/", down)
    assert not down.exists() and not (tmp_path / "escape").exists()


# --- start-up checks ---------------------------------------------------------------------------


def test_local_check(tmp_path: Path) -> None:
    LocalStorage(tmp_path / "new" / "store").check()
    assert sorted(os.listdir(tmp_path / "new" / "store")) == ["objects", "tmp"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_STORAGE_DIR: cannot write"):
        LocalStorage(tmp_path / "file" / "store").check()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "objects").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_STORAGE_DIR: .*symbolic link"):
        LocalStorage(tmp_path / "linked").check()
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "readonly").mkdir(mode=0o500)
        with pytest.raises(StorageMisconfigured, match=r"^ODDISH_STORAGE_DIR: "):
            LocalStorage(tmp_path / "readonly" / "store").check()


def test_check_names_the_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3_server)
    store.check()
    missing = S3Storage("no-such-bucket-here", "", store.client)
    with pytest.raises(StorageMisconfigured) as caught:
        missing.check()
    message = str(caught.value)
    assert message.startswith("ODDISH_S3_BUCKET: ") and "'no-such-bucket-here'" in message
    assert "\n" not in message
    # Every way in says the same (boto3's multipart upload wraps S3's answer in text).
    missing.transfer = transfer_config(threshold=5 * MB, chunksize=5 * MB)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5 * MB)
    for call in (
        lambda: missing.put_file("k", big),
        lambda: missing.put_bytes("k", b"x"),
        lambda: missing.iter_bytes("k"),
        lambda: list(missing.list()),
    ):
        with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_BUCKET: "):
            call()
    # A HEAD's 404 has no body to tell a missing bucket from a missing object.
    with pytest.raises(ObjectNotFound):
        missing.stat("k")


def test_check_names_the_credentials(s3_server: S3Server) -> None:
    """Moto checks access keys, signatures and IAM permissions once asked to: these are the
    server's own answers, not mocked ones."""
    store = s3_store(s3_server)
    store.put_bytes("x", b"x")
    access_key, secret_key = s3_server.create_access_key()
    cases = {
        "InvalidAccessKeyId": ("AKIANOSUCHKEY0000000", "whatever"),
        "SignatureDoesNotMatch": (access_key, "not-the-secret"),
        "AccessDenied": (access_key, secret_key),  # a real key without permission
    }
    with s3_server.checking_credentials():
        for code, (key_id, secret) in cases.items():
            client = make_client(
                endpoint_url=s3_server.endpoint,
                region="us-east-1",
                access_key=key_id,
                secret_key=secret,
                max_attempts=1,
            )
            refused = S3Storage(store.bucket, S3_PREFIX, client)
            with pytest.raises(StorageMisconfigured) as caught:
                refused.check()
            message = str(caught.value)
            assert message.startswith("ODDISH_S3_ACCESS_KEY/ODDISH_S3_SECRET_KEY: "), message
            assert code in message and secret not in message
            # Later requests say the same (a HEAD answers a bare 403).
            with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_ACCESS_KEY"):
                refused.stat("x")
            with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_ACCESS_KEY"):
                list(refused.iter_bytes("x"))
    store.check()  # checks are off again


def test_an_unreachable_endpoint(tmp_path: Path) -> None:
    """At start-up a misconfiguration naming the endpoint; mid-run, StorageUnavailable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it (never listen()ed)
        endpoint = f"http://127.0.0.1:{port}"
        client = make_client(
            endpoint_url=endpoint,
            region="us-east-1",
            access_key="a",
            secret_key="b",
            max_attempts=2,
        )
        store = S3Storage("bucket", "", client)
        started = time.monotonic()
        with pytest.raises(StorageMisconfigured) as caught:
            store.check()
        assert str(caught.value).startswith(f"ODDISH_S3_ENDPOINT_URL: cannot reach {endpoint}")
        with pytest.raises(StorageUnavailable, match=r"^ODDISH_S3_ENDPOINT_URL: cannot reach"):
            store.stat("x")
        with pytest.raises(StorageUnavailable):
            store.put_bytes("x", b"x")
        assert time.monotonic() - started < 15


def test_partial_credentials_and_bad_endpoints_are_misconfigurations() -> None:
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_SECRET_KEY: "):
        make_client(endpoint_url=None, region=None, access_key="a", secret_key=None)
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_ACCESS_KEY: "):
        make_client(endpoint_url=None, region=None, access_key=None, secret_key="b")
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_ENDPOINT_URL: "):
        make_client(endpoint_url="not a url", region=None, access_key="a", secret_key="b")


# --- the factory -------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("ODDISH_S3_") or name == "ODDISH_STORAGE_DIR":
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    reset_storage()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()
    reset_storage()


def test_factory_picks_the_backend_by_settings(tmp_path: Path, clean_env: Any) -> None:
    clean_env.setenv("ODDISH_HOME", str(tmp_path / "home"))
    store = get_storage()
    assert isinstance(store, LocalStorage) and store.root == tmp_path / "home" / "storage"
    assert get_storage() is store  # kept
    reset_storage()
    assert get_storage() is not store
    clean_env.setenv("ODDISH_STORAGE_DIR", str(tmp_path / "elsewhere"))
    assert get_storage().describe() == str(tmp_path / "home" / "storage")  # settings kept too
    get_settings.cache_clear()  # the settings read again: the store follows
    assert get_storage().describe() == str(tmp_path / "elsewhere")

    clean_env.setenv("ODDISH_S3_ENABLED", "true")
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_BUCKET: "):
        storage_from_settings(Settings())
    clean_env.setenv("ODDISH_S3_BUCKET", "b")
    clean_env.setenv("ODDISH_S3_PREFIX", "/team/oddish")
    clean_env.setenv("ODDISH_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    clean_env.setenv("ODDISH_S3_ACCESS_KEY", "key-id")
    clean_env.setenv("ODDISH_S3_SECRET_KEY", "very-secret")
    settings = Settings()
    assert "very-secret" not in repr(settings)
    config = config_from_settings(settings)
    assert isinstance(config, S3StorageConfig) and "very-secret" not in repr(config)
    remote = get_storage(settings)
    assert isinstance(remote, S3Storage) and remote.prefix == "team/oddish/"
    assert remote.describe() == "s3://b/team/oddish/ at http://127.0.0.1:9"
    assert get_storage(settings) is not remote  # explicit settings: a new store each time
    clean_env.setenv("ODDISH_S3_PREFIX", "a/../b")
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_PREFIX: "):
        storage_from_settings(Settings())
    local = storage_from_config(LocalStorageConfig(root=tmp_path / "x"))
    assert isinstance(local, LocalStorage)
    # Configs by name, as a file or an API would hold them.
    adapter: TypeAdapter[Any] = TypeAdapter(StorageConfig)
    parsed = adapter.validate_python({"type": "s3", "bucket": "b", "prefix": "p"})
    assert isinstance(parsed, S3StorageConfig) and parsed.bucket == "b"
    parsed = adapter.validate_python({"type": "local", "root": str(tmp_path)})
    assert isinstance(parsed, LocalStorageConfig)
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "ftp"})


def test_s3_works_through_the_factory(s3_server: S3Server, clean_env: Any) -> None:
    bucket = s3_server.create_bucket()
    for name, value in {
        "ODDISH_S3_ENABLED": "1",
        "ODDISH_S3_BUCKET": bucket,
        "ODDISH_S3_ENDPOINT_URL": s3_server.endpoint,
        "ODDISH_S3_REGION": "us-east-1",
        "ODDISH_S3_ACCESS_KEY": "testing",
        "ODDISH_S3_SECRET_KEY": "testing",
        "ODDISH_S3_PREFIX": "",
    }.items():
        clean_env.setenv(name, value)
    store = get_storage()
    store.check()
    store.put_bytes(storage_keys.task_archive_key("t", "h"), b"archive")
    assert [i.key for i in store.list(storage_keys.task_prefix("t"))] == ["tasks/t/h.tar.gz"]
