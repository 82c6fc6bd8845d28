"""The REST API served by uvicorn on 127.0.0.1, against the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from helpers import local, submit, wait_for_task
from oddish.embedded import free_port

pytestmark = pytest.mark.timeout(600)


def serve_api(env: dict[str, str], log_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "oddish.api", "--port", str(port), *args],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"API did not start:\n{log_path.read_text()}")
        time.sleep(0.2)


@pytest.fixture
def api(oddish_env: dict[str, str], task_queue: str, work_dir: Path, migrated: None) -> Iterator[str]:
    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": task_queue}
    process, url = serve_api(env, work_dir / f"api-{task_queue}.log", "--no-workers")
    yield url
    process.terminate()
    process.wait(timeout=20)


async def test_reads_of_a_finished_task(api: str, start_worker, temporal_client: Client) -> None:
    start_worker()
    task_id = await submit(temporal_client, "partial-credit", local(n_trials=2))
    await wait_for_task(temporal_client, task_id)
    async with httpx.AsyncClient(base_url=api) as http:
        task = (await http.get(f"/tasks/{task_id}")).json()
        assert task["status"] == "completed" and len(task["trials"]) == 2
        assert task["verdict"]["details"]["overall"]["mean_reward"] == pytest.approx(0.5)

        trial = (await http.get(f"/tasks/{task_id}/trials/1")).json()
        assert trial["index"] == 1 and trial["reward"] == pytest.approx(0.5)
        assert (await http.get(f"/trials/{trial['id']}")).json()["id"] == trial["id"]

        result = (await http.get(f"/trials/{trial['id']}/result")).json()
        assert result["verifier_result"]["rewards"]["correctness"] == 1.0
        logs = (await http.get(f"/trials/{trial['id']}/logs")).json()["files"]
        assert "result.json" in logs and any(name.startswith("verifier/") for name in logs)

        experiment = (await http.get(f"/experiments/{task['experiment_id']}")).json()
        assert experiment["by_agent_model"]["oracle/-"]["trials"] == 2
        assert any(e["id"] == task["experiment_id"] for e in (await http.get("/experiments")).json())

        for path in (f"/tasks/nope", f"/tasks/{task_id}/trials/7", "/trials/nope",
                     "/trials/nope/logs", "/experiments/nope"):
            response = await http.get(path)
            assert response.status_code == 404, path
            assert "no " in response.json()["detail"]
        assert (await http.get("/tasks", params={"status": "bogus"})).status_code == 422
        assert (await http.get("/tasks", params={"limit": 0})).status_code == 422


async def test_task_list_pages_completely(api: str, temporal_client: Client) -> None:
    experiment = f"paging-{os.getpid()}-{time.monotonic_ns()}"
    created = {await submit(temporal_client, "hello-pass", local(), experiment_id=experiment)
               for _ in range(250)}
    seen: list[str] = []
    offset: int | None = 0
    async with httpx.AsyncClient(base_url=api) as http:
        while offset is not None:
            page = (await http.get("/tasks", params={"experiment": experiment, "limit": 100,
                                                     "offset": offset})).json()
            assert page["total"] == 250
            seen += [t["id"] for t in page["tasks"]]
            offset = page["next_offset"]
    assert len(seen) == 250 and set(seen) == created


async def test_limits_read_and_set_at_run_time(api: str) -> None:
    async with httpx.AsyncClient(base_url=api) as http:
        assert (await http.put("/limits/anthropic/claude-test", json={"limit": 3})).json() == {
            "queue_key": "anthropic/claude-test", "limit": 3}
        limits = (await http.get("/limits")).json()
        assert limits["queues"]["anthropic/claude-test"]["limit"] == 3
        assert limits["default"] >= 1
        for bad in ({"limit": 0}, {"limit": "many"}, {}):
            response = await http.put("/limits/anthropic/claude-test", json=bad)
            assert response.status_code == 422, bad


def test_api_key_guards_every_route_but_health(
    oddish_env: dict[str, str], work_dir: Path, migrated: None
) -> None:
    env = {**os.environ, **oddish_env, "ODDISH_API_KEY": "s3cret"}
    process, url = serve_api(env, work_dir / "api-auth.log", "--no-workers")
    try:
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/tasks").status_code == 401
        assert httpx.get(f"{url}/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(f"{url}/tasks", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "tasks" in ok.json()
    finally:
        process.terminate()
        process.wait(timeout=20)
