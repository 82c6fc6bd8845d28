"""Temporal down when the API starts: the API comes up all the same, says it is degraded, takes
submissions, and once Temporal is back its worker connects and the work runs, with no restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from helpers import (
    EXAMPLES,
    poll,
    restartable_temporal_server,
    serve_api,
    task_archive,
    until_started,
    wait_for_task,
)
from oddish.temporal_gateway import connect

pytestmark = pytest.mark.timeout(600)


async def test_temporal_down_at_api_start_then_back(
    oddish_env: dict[str, str], task_queue: str, migrated: None, work_dir: Path, tmp_path: Path
) -> None:
    server = restartable_temporal_server(tmp_path)
    env = {
        **os.environ,
        **oddish_env,
        "ODDISH_TEMPORAL_TASK_QUEUE": task_queue,
        "ODDISH_TEMPORAL_ADDRESS": server.address,
        "ODDISH_SLOT_LEASE_SEC": "3",
    }
    # The API with its own worker, on a Temporal address nothing answers yet.
    api, url = serve_api(env, work_dir / f"api-{task_queue}-no-temporal.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            health = (await http.get("/health")).json()
            assert health["status"] == "degraded", health
            assert health["temporal"].startswith("connecting"), health
            assert health["worker"]["temporal_worker"] in ("starting", "reconnecting"), health

            upload_id = (
                await http.post(
                    "/tasks/upload",
                    files={"file": ("t.tar.gz", task_archive(EXAMPLES / "hello-pass"))},
                )
            ).json()["upload_id"]
            sweep = {
                "upload_id": upload_id,
                "configs": [{"agent": "oracle", "n_trials": 2}],
                "harbor": {"environment": "local"},
            }
            accepted = await http.post("/tasks/sweep", json=sweep)
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["id"]
            cancel = await http.post(f"/tasks/{task_id}/cancel")
            assert cancel.status_code == 503, cancel.text

            server.start()
            back = time.monotonic()

            async def healthy() -> dict | None:
                report = (await http.get("/health")).json()
                return report if report["status"] == "ok" else None

            report = await poll(healthy, timeout=90, what="/health ok after Temporal is back")
            assert report["worker"]["temporal_worker"] == "running"
            assert report["worker"]["dispatcher"] == "running"
            reconnected = time.monotonic() - back

        client = await connect(server.address)
        await until_started(client, task_id, timeout=120)
        task = await wait_for_task(client, task_id, timeout=180)
        assert task["status"] == "completed"
        assert [t["status"] for t in task["trials"]] == ["success", "success"]
        print(
            f"\nTemporal back: API healthy after {reconnected:.1f}s, "
            f"task done {time.monotonic() - back:.1f}s after the restart"
        )
    finally:
        api.terminate()
        api.wait(timeout=30)
        server.stop()
