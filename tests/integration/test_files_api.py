"""The files routes on a real run: a trial's output and a task's own files, listed and streamed
by an API process that runs no worker, with paths that try to leave the folder refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from helpers import EXAMPLES, local, submit, wait_for_task
from trajectory_agent import BIG_LOG_BYTES, big_log_line, trajectory

pytestmark = pytest.mark.timeout(300)

TESTS_DIR = Path(__file__).resolve().parents[1]
AGENT = "trajectory_agent:TrajectoryAgent"
ESCAPES = [
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2E%2E%5C%2E%2E%5Cetc%5Cpasswd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "agent/%2e%2e/%2e%2e/x",
    "a%00b",
]


def expected_big_log() -> str:
    digest = hashlib.sha256()
    written, i = 0, 0
    while written < BIG_LOG_BYTES:
        line = big_log_line(i)[: BIG_LOG_BYTES - written]
        digest.update(line)
        written += len(line)
        i += 1
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big_log_sha256() -> str:
    return expected_big_log()


async def test_a_trials_files_and_trajectory_are_listed_and_streamed(
    api: str, start_worker, temporal_client: Client, big_log_sha256: str
) -> None:
    start_worker(PYTHONPATH=str(TESTS_DIR))
    task_id = await submit(
        temporal_client, "hello-pass", local(AGENT), local("oracle"), run_analysis=False
    )
    task = await wait_for_task(temporal_client, task_id)
    by_agent = {t["agent"]: t for t in task["trials"]}
    recorder, oracle = by_agent[AGENT], by_agent["oracle"]
    assert recorder["status"] == "success", (recorder["error_type"], recorder["error_message"])

    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        listing = (await http.get(f"/trials/{recorder['id']}/files")).json()
        sizes = {f["path"]: f["size"] for f in listing["files"]}
        assert listing["trial_id"] == recorder["id"]
        assert listing["attempt"] == 1
        assert listing["truncated"] is False
        assert {"result.json", "config.json", "agent/trajectory.json"} <= set(sizes)
        assert sizes["agent/big.log"] == BIG_LOG_BYTES
        assert listing["total_bytes"] == sum(sizes.values())

        # One file, its bytes as stored, with its type; result.json is the /result route's.
        answer = await http.get(f"/trials/{recorder['id']}/files/result.json")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert int(answer.headers["content-length"]) == sizes["result.json"]
        assert answer.json() == (await http.get(f"/trials/{recorder['id']}/result")).json()

        # A big file streams whole (12 MiB, more than one chunk).
        digest = hashlib.sha256()
        async with http.stream("GET", f"/trials/{recorder['id']}/files/agent/big.log") as big:
            assert big.status_code == 200
            assert big.headers["content-type"].startswith("text/plain")
            async for chunk in big.aiter_bytes():
                digest.update(chunk)
        assert digest.hexdigest() == big_log_sha256

        # What the agent wrote as a web page is a sandboxed download, never a page of ours.
        page = await http.get(f"/trials/{recorder['id']}/files/agent/page.html")
        assert page.status_code == 200
        assert page.headers["content-disposition"].startswith("attachment")
        assert "sandbox" in page.headers["content-security-policy"]

        trajectory_answer = await http.get(f"/trials/{recorder['id']}/trajectory")
        assert trajectory_answer.status_code == 200
        assert trajectory_answer.json() == trajectory()
        assert (await http.get(f"/trials/{recorder['id']}/trajectory?attempt=1")).json() == (
            trajectory()
        )

        # The oracle writes no trajectory: a 404 that says so.
        none = await http.get(f"/trials/{oracle['id']}/trajectory")
        assert none.status_code == 404
        assert "trajectory.json" in none.json()["detail"]

        missing = await http.get(f"/trials/{recorder['id']}/files/agent/nothing-here.txt")
        assert missing.status_code == 404
        assert "nothing-here.txt" in missing.json()["detail"]
        # A directory is no file.
        assert (await http.get(f"/trials/{recorder['id']}/files/agent")).status_code == 404
        no_attempt = await http.get(f"/trials/{recorder['id']}/files?attempt=9")
        assert no_attempt.status_code == 404
        assert "no attempt 9" in no_attempt.json()["detail"]
        assert (await http.get("/trials/no-such-trial/files")).status_code == 404

        for escape in ESCAPES:
            answer = await http.get(f"/trials/{recorder['id']}/files/{escape}")
            assert answer.status_code in (400, 404), (escape, answer.status_code, answer.text)
            assert "root:" not in answer.text
        for escape in ESCAPES[:3]:
            answer = await http.get(f"/trials/{recorder['id']}/files/{escape}")
            assert answer.status_code == 400, escape
            assert "refused" in answer.json()["detail"]


async def test_a_tasks_own_files_are_listed_and_streamed(api: str, temporal_client: Client) -> None:
    # Stored at submission: no worker needed to read them.
    task_id = await submit(temporal_client, "partial-credit", local("nop"), run_analysis=False)
    source = EXAMPLES / "partial-credit"
    on_disk = {
        str(path.relative_to(source)): path.stat().st_size
        for path in sorted(source.rglob("*"))
        if path.is_file()
    }
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        listing = (await http.get(f"/tasks/{task_id}/files")).json()
        assert listing["task_id"] == task_id
        assert {f["path"]: f["size"] for f in listing["files"]} == on_disk

        for rel in on_disk:
            answer = await http.get(f"/tasks/{task_id}/files/{rel}")
            assert answer.status_code == 200, rel
            assert answer.content == (source / rel).read_bytes()
        instruction = await http.get(f"/tasks/{task_id}/files/instruction.md")
        assert instruction.headers["content-type"].startswith("text/plain")

        missing = await http.get(f"/tasks/{task_id}/files/tests/nothing.sh")
        assert missing.status_code == 404
        assert "nothing.sh" in missing.json()["detail"]
        for escape in ESCAPES[:3]:
            answer = await http.get(f"/tasks/{task_id}/files/{escape}")
            assert answer.status_code == 400, escape
        assert (await http.get("/tasks/no-such-task/files")).status_code == 404
