"""An S3 server for the tests: moto's, in a process of its own on 127.0.0.1.

A process of its own rather than moto's thread in the test process: what the test process
allocates (tracemalloc) is then the client's alone, the server's work runs on the other core,
and a crashed test run leaves nothing behind (the server exits when its stdin closes).

    from s3_server import s3_endpoint_fixture, s3_server_fixture  # noqa: F401

registers the fixtures ``s3_endpoint`` (the URL) and ``s3_server`` (an :class:`S3Server` that
also makes clients and buckets, and switches moto's credential checks on: moto accepts any
credentials until then). Both are session-wide; modules importing them share one server. Run as
a script, this file is that server process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

REGION = "us-east-1"
# Any credentials do while moto does not check them.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


_session = boto3.session.Session()


def client(
    endpoint: str,
    service: str = "s3",
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
) -> Any:
    """A boto3 client of the server, without retries (a test wants the first answer)."""
    return _session.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def create_bucket(endpoint: str, name: str | None = None) -> str:
    """A new bucket (a fresh name unless given); its name."""
    name = name or f"oddish-test-{secrets.token_hex(4)}"
    client(endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, service: str = "s3", **credentials: str) -> Any:
        return client(self.endpoint, service, **credentials)

    def create_bucket(self, name: str | None = None) -> str:
        return create_bucket(self.endpoint, name)

    def create_access_key(self) -> tuple[str, str]:
        """An IAM user's access key, known to moto (with no permission granted)."""
        iam = self.client("iam")
        user = f"oddish-test-{secrets.token_hex(4)}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _set_auth(self, free_requests: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=free_requests.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Moto checks every request's access key and signature (and IAM permissions) inside."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3_server(log_path: Path, timeout: float = 60.0) -> S3Server:
    """Start the server process; returns once it listens."""
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, __file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("http://"):
        process.kill()
        process.wait()
        raise RuntimeError(f"moto server did not start:\n{log_path.read_text(errors='replace')}")
    return S3Server(endpoint=line, process=process, log_path=log_path)


_shared: list[S3Server] = []
_users = 0


def s3_settings(server: S3Server, prefix: str = "") -> dict[str, str]:
    """The settings that make a process (and the workers it starts) store in a new bucket of
    ``server``."""
    return {
        "ODDISH_S3_ENABLED": "true",
        "ODDISH_S3_BUCKET": server.create_bucket(),
        "ODDISH_S3_ENDPOINT_URL": server.endpoint,
        "ODDISH_S3_REGION": REGION,
        "ODDISH_S3_ACCESS_KEY": ACCESS_KEY,
        "ODDISH_S3_SECRET_KEY": SECRET_KEY,
        "ODDISH_S3_PREFIX": prefix,
    }


@contextlib.contextmanager
def using_s3(server: S3Server, prefix: str = "", **also_here: str) -> Iterator[dict[str, str]]:
    """This process stores in a new bucket of ``server`` (plus the settings ``also_here``) until
    the block ends, when the previous settings come back. Yields the S3 settings, for the
    workers the test starts."""
    from helpers import using_settings

    env = s3_settings(server, prefix)
    with using_settings(**env, **also_here):
        yield env


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One server for the session, however many modules import this fixture."""
    global _users
    if not _shared:
        _shared.append(start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log"))
    _users += 1
    try:
        yield _shared[0]
    finally:
        _users -= 1
        if not _users:
            _shared.pop().stop()


@pytest.fixture(scope="session", name="s3_endpoint")
def s3_endpoint_fixture(s3_server: S3Server) -> str:
    return s3_server.endpoint


def _serve() -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"http://{host}:{port}", flush=True)
    sys.stdin.read()  # until the test process closes the pipe, or dies
    server.stop()


if __name__ == "__main__":
    _serve()
