"""oddish.storage at full size and through the settings of a real process: S3 (moto's server in a
process of its own) configured by ODDISH_S3_* variables alone, more keys than one S3 page, the
production retries against an endpoint that is gone, and replacements racing readers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from oddish.storage import (
    BaseStorage,
    StorageMisconfigured,
    StorageUnavailable,
    task_archive_key,
    task_prefix,
    trial_output_prefix,
)
from oddish.storage.local import LocalStorage
from oddish.storage.s3 import S3Storage, make_client
from s3_server import S3Server, s3_server_fixture, start_s3_server  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from oddish.storage import StorageError, get_storage, task_archive_key

    try:
        storage = get_storage()
        storage.check()
    except StorageError as exc:
        print(f"{type(exc).__name__}: {exc}")
        sys.exit(2)
    print(storage.describe())
    key = task_archive_key("task-1", "abc123")
    storage.put_file(key, Path(sys.argv[1]))
    print(storage.stat(key).size)
    """
)


def s3_env(server: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODDISH_", "AWS_"))}
    return {
        **env,
        "ODDISH_S3_ENABLED": "true",
        "ODDISH_S3_BUCKET": bucket,
        "ODDISH_S3_ENDPOINT_URL": server.endpoint,
        "ODDISH_S3_REGION": "us-east-1",
        "ODDISH_S3_ACCESS_KEY": "testing",
        "ODDISH_S3_SECRET_KEY": "testing",
        "ODDISH_S3_PREFIX": "/prod/oddish",
        **extra,
    }


def run_script(env: dict[str, str], archive: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(archive)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_process_configured_by_the_environment_alone(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket()
    archive = tmp_path / "task.tar.gz"
    archive.write_bytes(os.urandom(3000))
    result = run_script(s3_env(s3_server, bucket), archive)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"s3://{bucket}/prod/oddish/ at {s3_server.endpoint}",
        "3000",
    ]
    raw = s3_server.client().head_object(
        Bucket=bucket, Key="prod/oddish/tasks/task-1/abc123.tar.gz"
    )
    assert raw["ContentLength"] == 3000

    # A misconfiguration is one line naming the setting, and no secret.
    wrong = run_script(s3_env(s3_server, "no-such-bucket"), archive)
    assert wrong.returncode == 2, wrong.stderr
    assert wrong.stdout.startswith("StorageMisconfigured: ODDISH_S3_BUCKET: bucket 'no-such")
    assert len(wrong.stdout.splitlines()) == 1
    unset = run_script(s3_env(s3_server, "", ODDISH_S3_BUCKET=""), archive)
    assert unset.stdout.startswith("StorageMisconfigured: ODDISH_S3_BUCKET: must be set")
    with s3_server.checking_credentials():
        refused = run_script(s3_env(s3_server, bucket, ODDISH_S3_SECRET_KEY="hunter2"), archive)
    assert refused.stdout.startswith(
        "StorageMisconfigured: ODDISH_S3_ACCESS_KEY/ODDISH_S3_SECRET_KEY: credentials refused"
    ), refused.stdout + refused.stderr
    assert "hunter2" not in refused.stdout + refused.stderr


def test_more_keys_than_one_s3_page(s3_server: S3Server, tmp_path: Path) -> None:
    """1,100 objects: S3 lists at most 1,000 per page and deletes at most 1,000 per request."""
    client = make_client(
        endpoint_url=s3_server.endpoint, region=None, access_key="t", secret_key="t"
    )
    storage = S3Storage(s3_server.create_bucket(), "many", client)
    tree = tmp_path / "tree"
    names = [f"d{i % 7}/f{i:04d}" for i in range(1100)]
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(name.encode())
    prefix = trial_output_prefix("t", "r", 1)
    started = time.monotonic()
    assert len(storage.put_tree(prefix, tree)) == 1100
    uploaded = time.monotonic() - started
    listed = [info.key for info in storage.list(task_prefix("t"))]
    assert listed == sorted(prefix + name for name in names)
    assert storage.delete_prefix(task_prefix("t")) == 1100
    assert list(storage.list()) == []
    print(f"1,100 objects: put_tree {uploaded:.1f}s, all {time.monotonic() - started:.1f}s")


def test_an_endpoint_that_goes_away(tmp_path: Path) -> None:
    """With the production retries: requests fail as StorageUnavailable within their retries'
    time, and a start-up check names ODDISH_S3_ENDPOINT_URL."""
    server = start_s3_server(tmp_path / "moto.log")
    try:
        bucket = server.create_bucket()
        client = make_client(
            endpoint_url=server.endpoint, region="us-east-1", access_key="t", secret_key="t"
        )
        storage = S3Storage(bucket, "", client)
        storage.put_bytes("k", b"value")
        chunks = storage.iter_bytes("k", chunk_size=2)
        assert next(chunks) == b"va"
    finally:
        server.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"^ODDISH_S3_ENDPOINT_URL: cannot reach"):
        storage.stat("k")
    with pytest.raises(StorageMisconfigured, match=r"^ODDISH_S3_ENDPOINT_URL: cannot reach"):
        storage.check()
    elapsed = time.monotonic() - started
    # Five attempts each, with standard-mode backoff (random, at most 1+2+4+8 s per request).
    assert elapsed < 60, elapsed
    print(f"two requests against a stopped endpoint failed in {elapsed:.1f}s")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_readers_see_whole_objects_while_writers_replace_them(
    backend: str, s3_server: S3Server, tmp_path: Path
) -> None:
    storage: BaseStorage
    if backend == "local":
        storage = LocalStorage(tmp_path / "store")
    else:
        client = make_client(
            endpoint_url=s3_server.endpoint, region=None, access_key="t", secret_key="t"
        )
        storage = S3Storage(s3_server.create_bucket(), "", client)
    key = task_archive_key("t", "h")
    size = 256 * 1024
    storage.put_bytes(key, b"\0" * size)
    deadline = time.monotonic() + 2
    failures: list[str] = []

    def write(marker: int) -> None:
        while time.monotonic() < deadline:
            storage.put_bytes(key, bytes([marker]) * size)

    def read() -> None:
        reads = 0
        while time.monotonic() < deadline or reads == 0:
            data = b"".join(storage.iter_bytes(key, chunk_size=4096))
            reads += 1
            if len(data) != size or len(set(data)) != 1:
                failures.append(f"torn read: {len(data)} bytes, {len(set(data))} values")

    threads = [threading.Thread(target=write, args=(m,)) for m in (1, 2)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    if backend == "local":
        assert os.listdir(tmp_path / "store" / "tmp") == []
