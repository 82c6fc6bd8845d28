"""What the storage fault tests share: moto behind a TCP proxy the test can stop, the bucket as
it is, the worker's log about uploads, and the check that every trial ran once with its whole
output stored where its record says.

    from storage_faults import proxy_fixture, s3_env_fixture  # noqa: F401  (the fixtures)
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3_server import S3Server, using_s3
from tcp_proxy import TcpProxy, tcp_proxy


@pytest.fixture(name="proxy")
def proxy_fixture(s3_server: S3Server) -> Iterator[TcpProxy]:
    with tcp_proxy(s3_server.endpoint) as started:
        yield started


@pytest.fixture(name="s3_env")
def s3_env_fixture(s3_server: S3Server, tmp_path: Path) -> Iterator[dict[str, str]]:
    """S3 settings (a bucket and prefix of the test's own) for this process, talking to moto
    directly, and for its workers (whose endpoint the test sets to the proxy)."""
    prefix = f"faults-{secrets.token_hex(3)}/"
    with using_s3(s3_server, prefix, ODDISH_TASKS_DIR=str(tmp_path / "submitter-tasks")) as env:
        yield env


def stored(server: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    """The objects under ``prefix``, by key relative to it."""
    client = server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        item["Key"].removeprefix(prefix): client.get_object(Bucket=bucket, Key=item["Key"])[
            "Body"
        ].read()
        for item in listed
    }


def stored_keys(server: S3Server, bucket: str, prefix: str) -> set[str]:
    """The keys under ``prefix``, relative to it."""
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"].removeprefix(prefix) for item in listed}


def agents_asleep(seconds: str) -> int:
    """Sandboxed agents asleep for ``seconds`` right now (the sleep task's solve.sh): a value of
    the test's own, so that no other test's agents count."""
    out = subprocess.run(
        ["pgrep", "-f", f"^sleep {re.escape(seconds)}$"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return len(out.split())


def failed_tries(log: str, location: str) -> int:
    """How often the worker's upload of an attempt's output failed, by its log."""
    return log.count(f"output of {location}: storage failed")


def uploads_logged(log: str) -> str:
    """The worker's log lines about outputs (uploads, and the sweep of stranded ones)."""
    return "\n".join(
        line
        for line in log.splitlines()
        if "oddish.trial_output" in line or "oddish.worker.output_sweep" in line
    )


def assert_each_output_stored_once(
    task: dict[str, Any],
    locations: dict[str, str],
    server: S3Server,
    bucket: str,
    prefix: str,
    jobs_dir: Path,
) -> None:
    """Every trial succeeded in one attempt, and its first attempt's whole output (and no other
    attempt's) is in the bucket where its record says, no longer on the worker's disk."""
    for trial in task["trials"]:
        # Recorded once, by the one attempt that ran: no trial ran again.
        assert (trial["status"], trial["reward"]) == ("success", 1.0), trial
        assert [(a["number"], a["temporal_attempt"], a["status"]) for a in trial["attempts"]] == [
            (1, 1, "success")
        ], trial["attempts"]
        location = locations[trial["id"]]
        assert trial["harbor_trial_dir"] == trial["attempts"][0]["harbor_trial_dir"] == location
        output = stored(server, bucket, prefix + location)
        result = json.loads(output["result.json"])
        assert result["trial_name"] == "attempt-1"
        assert result["verifier_result"]["rewards"] == {"reward": 1.0}
        assert any(name.startswith("verifier/") for name in output), sorted(output)
        assert any(name.startswith("agent/") for name in output), sorted(output)
    outputs_prefix = f"{prefix}tasks/{task['id']}/trials/"
    uploaded = {tuple(key.split("/")[:2]) for key in stored_keys(server, bucket, outputs_prefix)}
    assert uploaded == {(trial_id, "attempt-1") for trial_id in locations}, uploaded
    assert list(jobs_dir.rglob("attempt-*")) == []
