"""The REST API served by uvicorn on 127.0.0.1, against the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from helpers import (
    EXAMPLES,
    local,
    serve_api,
    stored_task_file,
    submit,
    symlink_archive,
    task_archive,
    task_archive_without,
    wait_for_task,
    wait_until_running,
)

pytestmark = pytest.mark.timeout(600)


async def test_reads_of_a_finished_task(api: str, start_worker, temporal_client: Client) -> None:
    start_worker()
    task_id = await submit(temporal_client, "partial-credit", local(n_trials=2))
    await wait_for_task(temporal_client, task_id)
    async with httpx.AsyncClient(base_url=api) as http:
        task = (await http.get(f"/tasks/{task_id}")).json()
        assert task["status"] == "completed" and len(task["trials"]) == 2
        assert task["verdict"]["details"]["overall"]["mean_reward"] == pytest.approx(0.5)

        [listed] = (await http.get("/tasks", params={"experiment": task["experiment_id"]})).json()[
            "tasks"
        ]
        assert listed["trials_finished"] == 2 and listed["mean_reward"] == pytest.approx(0.5)

        trial = (await http.get(f"/tasks/{task_id}/trials/1")).json()
        assert trial["index"] == 1 and trial["reward"] == pytest.approx(0.5)
        assert (await http.get(f"/trials/{trial['id']}")).json()["id"] == trial["id"]

        result = (await http.get(f"/trials/{trial['id']}/result")).json()
        assert result["verifier_result"]["rewards"]["correctness"] == 1.0
        logs = (await http.get(f"/trials/{trial['id']}/logs")).json()["files"]
        assert "result.json" in logs and any(name.startswith("verifier/") for name in logs)

        experiment = (await http.get(f"/experiments/{task['experiment_id']}")).json()
        assert experiment["by_agent_model"]["oracle/-"]["trials"] == 2
        assert any(
            e["id"] == task["experiment_id"] for e in (await http.get("/experiments")).json()
        )

        for path in (
            "/tasks/nope",
            f"/tasks/{task_id}/trials/7",
            "/trials/nope",
            "/trials/nope/logs",
            "/experiments/nope",
        ):
            response = await http.get(path)
            assert response.status_code == 404, path
            assert "no " in response.json()["detail"]
        assert (await http.get("/tasks", params={"status": "bogus"})).status_code == 422
        assert (await http.get("/tasks", params={"limit": 0})).status_code == 422


async def test_task_list_pages_completely(api: str, temporal_client: Client) -> None:
    experiment = f"paging-{os.getpid()}-{time.monotonic_ns()}"
    created = {
        await submit(temporal_client, "hello-pass", local(), experiment_id=experiment)
        for _ in range(250)
    }
    seen: list[str] = []
    offset: int | None = 0
    async with httpx.AsyncClient(base_url=api) as http:
        while offset is not None:
            page = (
                await http.get(
                    "/tasks", params={"experiment": experiment, "limit": 100, "offset": offset}
                )
            ).json()
            assert page["total"] == 250
            seen += [t["id"] for t in page["tasks"]]
            offset = page["next_offset"]
    assert len(seen) == 250 and set(seen) == created


async def test_limits_read_and_set_at_run_time(api: str) -> None:
    async with httpx.AsyncClient(base_url=api) as http:
        assert (await http.put("/limits/anthropic/claude-test", json={"limit": 3})).json() == {
            "queue_key": "anthropic/claude-test",
            "limit": 3,
        }
        limits = (await http.get("/limits")).json()
        assert limits["queues"]["anthropic/claude-test"]["limit"] == 3
        assert limits["default"] >= 1
        # A model's limit holds however it is spelt: it is stored under the trials' key.
        assert (await http.put("/limits/Claude-Test-2", json={"limit": 2})).json() == {
            "queue_key": "anthropic/claude-test-2",
            "limit": 2,
        }
        assert (await http.get("/limits")).json()["queues"]["anthropic/claude-test-2"]["limit"] == 2
        for bad in ({"limit": 0}, {"limit": "many"}, {}, {"limit": 2, "limt": 3}):
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
        assert (
            httpx.get(f"{url}/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        ok = httpx.get(f"{url}/tasks", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "tasks" in ok.json()
    finally:
        process.terminate()
        process.wait(timeout=20)


async def test_upload_then_sweep_runs_the_task(
    api: str, start_worker, temporal_client: Client, tmp_path: Path
) -> None:
    start_worker()
    archive = task_archive(EXAMPLES / "hello-pass", folder="hello-pass/")
    # The same files uploaded before without their folder (so under another name).
    unnamed = task_archive(EXAMPLES / "hello-pass")
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        other = (await http.post("/tasks/upload", files={"file": ("t.tar.gz", unnamed)})).json()
        first = (await http.post("/tasks/upload", files={"file": ("t.tar.gz", archive)})).json()
        assert other["content_hash"] == first["content_hash"]
        assert other["upload_id"] != first["upload_id"], "a name of its own"
        again = (await http.post("/tasks/upload", files={"file": ("t.tar.gz", archive)})).json()
        assert first["upload_id"] == again["upload_id"] and again["reused"] is True
        assert first["name"] == "hello-pass"

        created = await http.post(
            "/tasks/sweep",
            json={
                "upload_id": first["upload_id"],
                "configs": [{"agent": "oracle", "n_trials": 2}, {"agent": "nop", "n_trials": 1}],
                "harbor": {"environment": "local", "docker_image": "python:3.12-slim"},
            },
        )
        assert created.status_code == 200, created.text
        body = created.json()
        stored = await stored_task_file(body["id"], "task.toml", tmp_path / "cache")
        assert 'docker_image = "python:3.12-slim"' in stored
        assert body["trials_count"] == 3 and body["url"].endswith(f"/tasks/{body['id']}")
        task = await wait_for_task(temporal_client, body["id"])
        assert task["name"] == "hello-pass"
        assert sorted(t["reward"] for t in task["trials"]) == [0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("archive", "status", "words"),
    [
        (lambda: task_archive(EXAMPLES / "hello-pass", extra={"../evil": b"x"}), 400, "'..'"),
        (lambda: task_archive(EXAMPLES / "hello-pass", extra={"/tmp/evil": b"x"}), 400, "absolute"),
        (symlink_archive, 400, "link"),
        (lambda: b"this is not a tarball", 400, "gzip"),
        (lambda: task_archive(EXAMPLES / "hello-pass" / "tests"), 422, "task.toml"),
        (
            lambda: task_archive(
                EXAMPLES / "hello-pass" / "tests",
                extra={
                    "task.toml": b'[environment]\ncpus = "lots"\n',
                    "instruction.md": b"Say hi.",
                },
            ),
            422,
            "environment.cpus",
        ),
        (
            lambda: task_archive(EXAMPLES / "hello-pass" / "tests", extra={"task.toml": b""}),
            422,
            "instruction.md",
        ),
        (lambda: b"\0" * (3 * 1024 * 1024), 413, "limit"),
    ],
)
@pytest.mark.parametrize("path", ["/tasks/upload", "/tasks/run"])
async def test_bad_uploads_are_refused_and_write_nothing(
    api: str, work_dir: Path, archive, status: int, words: str, path: str
) -> None:
    before = stored_files(work_dir)
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        tasks_before = (await http.get("/tasks")).json()["total"]
        response = await http.post(
            path, files={"file": ("t.tar.gz", archive())}, data=sweep_field(path)
        )
        assert response.status_code == status, response.text
        assert words in str(response.json()["detail"])
        assert (await http.get("/tasks")).json()["total"] == tasks_before
    assert stored_files(work_dir) == before
    assert not (work_dir / "tasks" / "evil").exists() and not Path("/tmp/evil").exists()
    assert not any((work_dir / "tasks" / "incoming").glob("*"))


def stored_files(work_dir: Path) -> set[Path]:
    """Every file the API stores: uploads (in its tasks directory) and task archives (in its
    storage)."""
    roots = (work_dir / "tasks", work_dir / "home" / "storage")
    return {p for root in roots for p in root.rglob("*") if p.is_file()}


def sweep_field(path: str, **sweep: object) -> dict[str, str]:
    """POST /tasks/run's ``sweep`` field (oracle trials in ``local``); nothing for an upload."""
    if path != "/tasks/run":
        return {}
    body = {"configs": [{"agent": "oracle"}], "harbor": {"environment": "local"}, **sweep}
    return {"sweep": json.dumps(body)}


async def test_run_in_one_request_runs_the_task_once_however_often_it_is_sent(
    api: str, start_worker, temporal_client: Client, work_dir: Path
) -> None:
    start_worker()
    archive = task_archive(EXAMPLES / "hello-pass", folder="hello-pass/")
    uploads = work_dir / "tasks" / "uploads"
    uploads_before = set(uploads.iterdir()) if uploads.exists() else set()
    archives_before = set((work_dir / "home" / "storage").rglob("*.tar.gz"))
    key = f"run-{os.urandom(4).hex()}"
    field = sweep_field(
        "/tasks/run", configs=[{"agent": "oracle", "n_trials": 2}], submission_key=key
    )
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        sent = [
            http.post("/tasks/run", files={"file": ("t.tar.gz", archive)}, data=field)
            for _ in range(3)
        ]
        answers = await asyncio.gather(*sent)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1, "a resent request answers the task the first one made"
    task_id = ids.pop()
    assert answers[0].json()["trials_count"] == 2
    # Stored as the task's own archive, with nothing kept as an upload; the copies the resent
    # requests stored are gone.
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == uploads_before
    assert "[verifier]" in await stored_task_file(task_id, "task.toml", work_dir / "cache")
    archives = set((work_dir / "home" / "storage").rglob("*.tar.gz")) - archives_before
    assert len(archives) == 1 and task_id in str(archives.pop()), archives
    task = await wait_for_task(temporal_client, task_id)
    assert task["name"] == "hello-pass" and task["status"] == "completed"
    assert [t["reward"] for t in task["trials"]] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("sweep", "words"),
    [
        ("{not json", "json"),
        ('{"configs": []}', "configs"),
        ('{"configs": [{"agent": "oracle"}], "upload_id": "abc"}', "upload_id"),
        ('{"configs": [{"agent": "no-such-agent"}]}', "no-such-agent"),
        ('{"configs": [{"agent": "oracle", "n_trials": 0}]}', "n_trials"),
    ],
)
async def test_run_with_a_bad_sweep_is_refused_with_its_reason_and_stores_nothing(
    api: str, work_dir: Path, sweep: str, words: str
) -> None:
    archive = task_archive(EXAMPLES / "hello-pass", folder="hello-pass/")
    before = stored_files(work_dir)
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        response = await http.post(
            "/tasks/run", files={"file": ("t.tar.gz", archive)}, data={"sweep": sweep}
        )
        missing = await http.post("/tasks/run", files={"file": ("t.tar.gz", archive)})
    assert response.status_code == 422, response.text
    assert words in str(response.json()["detail"]).lower(), response.text
    assert missing.status_code == 422 and "sweep" in missing.text, missing.text
    assert stored_files(work_dir) == before


async def test_chunked_upload_without_length_is_refused_as_it_arrives(
    api: str, work_dir: Path
) -> None:
    boundary = "oddish-test-boundary"
    sent = 0

    async def body():  # no Content-Length: httpx sends it chunked
        nonlocal sent
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="t.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n'
        ).encode()
        for _ in range(64):
            sent += 256 * 1024
            yield b"\0" * (256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        try:
            response = await http.post(
                "/tasks/upload",
                content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        except httpx.RemoteProtocolError:
            pytest.fail("the server hung up instead of answering 413")
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["detail"]
    assert not any((work_dir / "tasks" / "incoming").glob("*"))


async def test_bad_sweeps_are_refused(api: str) -> None:
    user = f"bad-sweeps-{time.monotonic_ns()}"
    archive = task_archive(EXAMPLES / "hello-pass")
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        upload_id = (
            await http.post("/tasks/upload", files={"file": ("t.tar.gz", archive)})
        ).json()["upload_id"]
        cases = [
            ({"upload_id": "f" * 64, "configs": [{}]}, 404, "no uploaded task"),
            ({"upload_id": "../../etc", "configs": [{}]}, 404, "no uploaded task"),
            ({"upload_id": upload_id, "configs": [{"agent": "nobody"}]}, 422, "unknown agent"),
            (
                {"upload_id": upload_id, "configs": [{}], "harbor": {"environment": "moon"}},
                422,
                "unknown environment",
            ),
            ({"upload_id": upload_id, "configs": [{"n_trials": 0}]}, 422, "greater than or equal"),
            ({"upload_id": upload_id, "configs": []}, 422, "at least 1"),
            # Misspelt fields are named, not dropped.
            ({"upload_id": upload_id, "configs": [{"n_trails": 3}]}, 422, "n_trails"),
            ({"upload_id": upload_id, "configs": [{}], "harbor": {"env": "local"}}, 422, "env"),
            # Values past what the records hold are refused with the bound, not a 500.
            ({"upload_id": upload_id, "configs": [{}], "experiment_id": "e" * 65}, 422, "64"),
            (
                {"upload_id": upload_id, "configs": [{}], "priority": 3_000_000_000},
                422,
                "less than or equal",
            ),
            ({"upload_id": upload_id, "configs": [{"model": "m" * 300}]}, 422, "200"),
            # Postgres cannot store a NUL character: 422, and the transaction wrote nothing.
            (
                {"upload_id": upload_id, "configs": [{}], "user": user, "name": "a\u0000b"},
                422,
                "cannot store",
            ),
        ]
        for body, status, words in cases:
            response = await http.post("/tasks/sweep", json=body)
            assert response.status_code == status, (body, response.text)
            assert words in response.text, (body, response.text)
        assert (await http.get("/tasks", params={"user": user})).json()["total"] == 0

        no_tests = task_archive_without(EXAMPLES / "hello-pass", "tests")
        upload_id = (
            await http.post("/tasks/upload", files={"file": ("t.tar.gz", no_tests)})
        ).json()["upload_id"]
        response = await http.post("/tasks/sweep", json={"upload_id": upload_id, "configs": [{}]})
        assert response.status_code == 422 and "tests/test.sh" in response.text, response.text
        response = await http.post(
            "/tasks/sweep",
            json={
                "upload_id": upload_id,
                "configs": [{}],
                "user": user,
                "harbor": {"verifier": {"disable": True}},
            },
        )
        assert response.status_code == 200, response.text

        for path, params in (
            (f"/tasks/x/trials/{2**40}", {}),
            ("/tasks", {"offset": 10**19}),
            (f"/limits/{'k' * 300}", None),
            ("/limits/%20%20", None),
        ):
            response = await (
                http.get(path, params=params)
                if params is not None
                else http.put(path, json={"limit": 1})
            )
            assert response.status_code == 422, (path, response.text)


async def test_cancel_delete_and_rename(
    api: str, start_worker, temporal_client: Client, work_dir: Path
) -> None:
    start_worker()
    sleepy = local(n_trials=2, agent_env={"ODDISH_SLEEP_SECONDS": "59"})
    experiment = f"control-{time.monotonic_ns()}"
    running = await submit(temporal_client, "sleep", sleepy, experiment_id=experiment)
    done = await submit(temporal_client, "hello-pass", local(), experiment_id=experiment)
    await wait_for_task(temporal_client, done)
    async with httpx.AsyncClient(base_url=api, timeout=180) as http:
        for _ in range(300):
            task = (await http.get(f"/tasks/{running}")).json()
            if any(t["status"] == "running" for t in task["trials"]):
                break
            await asyncio.sleep(0.1)
        started = time.monotonic()
        assert (await http.post(f"/tasks/{running}/cancel")).json()["status"] == "cancelling"
        for _ in range(300):
            task = (await http.get(f"/tasks/{running}")).json()
            if task["status"] == "cancelled":
                break
            await asyncio.sleep(0.1)
        print(f"cancel -> task cancelled in {time.monotonic() - started:.1f}s")
        assert task["status"] == "cancelled"
        assert {t["status"] for t in task["trials"]} == {"cancelled"}
        assert (await http.post(f"/tasks/{done}/cancel")).json()["status"] == "completed"

        refused = await http.post(f"/tasks/{done}/retry")
        assert (
            refused.status_code == 409 and "no trials that did not pass" in refused.json()["detail"]
        )
        done_trial = (await http.get(f"/tasks/{done}")).json()["trials"][0]["id"]
        refused = await http.post(f"/trials/{done_trial}/retry")
        assert refused.status_code == 409 and f"{done_trial} has passed" in refused.json()["detail"]
        retried = (await http.post(f"/experiments/{experiment}/retry")).json()
        assert [t["task_id"] for t in retried["tasks"]] == [running]
        assert sorted(retried["tasks"][0]["retried"]) == sorted(t["id"] for t in task["trials"])
        await wait_until_running(running, timeout=60)
        stopping = (await http.post(f"/experiments/{experiment}/cancel")).json()
        assert stopping["tasks"] == [{"id": running, "status": "cancelling"}]

        renamed = await http.patch(f"/experiments/{experiment}", json={"name": "renamed run"})
        assert renamed.json()["name"] == "renamed run"
        assert (
            await http.patch(f"/experiments/{experiment}", json={"name": ""})
        ).status_code == 422

        assert (await http.delete(f"/tasks/{done}")).json()["deleted"] is True
        assert (await http.get(f"/tasks/{done}")).status_code == 404
        assert not (work_dir / "tasks" / done).exists()
        assert not (work_dir / "harbor-jobs" / done).exists()

        deleted = (await http.delete(f"/experiments/{experiment}")).json()
        assert deleted["tasks_deleted"] == 1
        assert (await http.get(f"/experiments/{experiment}")).status_code == 404
        assert (await http.get(f"/tasks/{running}")).status_code == 404
        for method, path in (
            ("DELETE", "/tasks/nope"),
            ("DELETE", "/experiments/nope"),
            ("POST", "/tasks/nope/cancel"),
            ("PATCH", "/experiments/nope"),
            ("POST", "/tasks/nope/retry"),
            ("POST", "/trials/nope/retry"),
            ("POST", "/experiments/nope/retry"),
            ("POST", "/experiments/nope/cancel"),
        ):
            response = await http.request(method, path, json={"name": "x"})
            assert response.status_code == 404, (method, path, response.text)


async def test_an_experiment_is_found_by_its_name(api: str) -> None:
    name = f"named-{time.monotonic_ns()}"
    archive = task_archive(EXAMPLES / "hello-pass")
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        upload_id = (
            await http.post("/tasks/upload", files={"file": ("t.tar.gz", archive)})
        ).json()["upload_id"]
        first = (
            await http.post(
                "/tasks/sweep",
                json={"upload_id": upload_id, "configs": [{}], "experiment_name": name},
            )
        ).json()
        # The name where an id goes joins that experiment instead of starting one called so.
        second = (
            await http.post(
                "/tasks/sweep",
                json={"upload_id": upload_id, "configs": [{}], "experiment_id": name},
            )
        ).json()
        assert second["experiment"] == first["experiment"] != name
        experiment = (await http.get(f"/experiments/{name}")).json()
        assert experiment["id"] == first["experiment"]
        assert {t["id"] for t in experiment["tasks"]} == {first["id"], second["id"]}
        listed = (await http.get("/tasks", params={"experiment": name})).json()
        assert listed["total"] == 2


def test_n_concurrent_applies_without_workers(
    oddish_env: dict[str, str], task_queue: str, work_dir: Path, migrated: None
) -> None:
    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": task_queue}
    process, url = serve_api(
        env,
        work_dir / f"api-{task_queue}-limits.log",
        "--no-workers",
        "--n-concurrent",
        '{"claude-no-workers": 3}',
    )
    try:
        # Workers elsewhere read limits from Postgres, so the API's flag must reach it too.
        queues = httpx.get(f"{url}/limits", timeout=10).json()["queues"]
        assert queues["anthropic/claude-no-workers"]["limit"] == 3
    finally:
        process.terminate()
        process.wait(timeout=20)
