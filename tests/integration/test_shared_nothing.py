"""Workers that share no disk with the submitter or the API: task archives and trial outputs go
through S3 (moto's server).

The test process submits (as the API or the library does) with its own ODDISH_TASKS_DIR; the
worker has another ODDISH_TASKS_DIR, task cache, Harbor output directory and home, and so has the
API process that serves the trials' results and logs. Only Postgres, Temporal and the bucket are
shared."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harbor.viewer.scanner import JobScanner
from sqlalchemy.exc import DBAPIError
from temporalio.client import Client

from helpers import EXAMPLES, local, serve_api, submit, wait_for_task
from oddish import task_control
from oddish.db import records
from oddish.db.connection import get_session
from oddish.queue import create_task
from oddish.schemas import TaskSubmission
from s3_server import S3Server, s3_server_fixture, using_s3  # noqa: F401  (the fixture)
from trajectory_agent import BIG_LOG_BYTES

pytestmark = pytest.mark.timeout(600)

PREFIX = "shared-nothing/"
TESTS_DIR = Path(__file__).resolve().parents[1]
TRAJECTORY_AGENT = "trajectory_agent:TrajectoryAgent"


@pytest.fixture
def s3_env(s3_server: S3Server, tmp_path: Path) -> Iterator[dict[str, str]]:
    """S3 settings for this process (the submitter) and its workers, with a tasks directory of
    the submitter's own; the previous settings come back afterwards."""
    with using_s3(s3_server, PREFIX, ODDISH_TASKS_DIR=str(tmp_path / "submitter-tasks")) as env:
        yield env


def objects(server: S3Server, bucket: str, prefix: str = PREFIX) -> dict[str, bytes]:
    client = server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listed
    }


async def test_a_worker_sharing_no_disk_runs_a_task_stored_in_s3(
    s3_server: S3Server,
    s3_env: dict[str, str],
    start_worker,
    task_queue: str,
    temporal_client: Client,
    tmp_path: Path,
) -> None:
    bucket = s3_env["ODDISH_S3_BUCKET"]
    elsewhere = tmp_path / "worker-machine"
    worker = start_worker(
        **s3_env,
        PYTHONPATH=str(TESTS_DIR),
        ODDISH_TASKS_DIR=str(elsewhere / "tasks"),
        ODDISH_TASK_CACHE_DIR=str(elsewhere / "task-cache"),
        ODDISH_HARBOR_JOBS_DIR=str(elsewhere / "harbor-jobs"),
        ODDISH_HOME=str(elsewhere / "home"),
    )
    task_id = await submit(
        temporal_client,
        "partial-credit",
        local(n_trials=2),
        local("nop"),
        local(TRAJECTORY_AGENT),
        run_analysis=False,
    )
    task = await wait_for_task(temporal_client, task_id)

    assert task["status"] == "completed"
    assert sorted(t["reward"] for t in task["trials"]) == [0.0, 0.0, 0.5, 0.5]
    oracle = [t for t in task["trials"] if t["agent"] == "oracle"]
    assert all(t["rewards"] == {"reward": 0.5, "correctness": 1.0, "style": 0.0} for t in oracle), (
        oracle
    )
    assert {a["worker"].rsplit(":", 1)[1] for t in task["trials"] for a in t["attempts"]} == {
        str(worker.process.pid)
    }, "every attempt ran in the worker process"

    # The record holds the archive's location (its key) and sha256, not a local path.
    async with get_session() as session:
        row = await records.get_task(session, task_id)
    sha256 = row.archive_sha256
    assert sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", sha256)
    assert row.task_path == f"tasks/{task_id}/{sha256}.tar.gz"
    # ... which is an object in the bucket, under the prefix, with those bytes.
    stored = objects(s3_server, bucket, f"{PREFIX}tasks/{task_id}/")
    trials_prefix = f"{PREFIX}tasks/{task_id}/trials/"
    assert [key for key in stored if not key.startswith(trials_prefix)] == [PREFIX + row.task_path]
    assert hashlib.sha256(stored[PREFIX + row.task_path]).hexdigest() == sha256

    # Every attempt's Harbor output is in the bucket, under the prefix its records hold.
    attempts = [(t, a) for t in task["trials"] for a in t["attempts"]]
    assert len(attempts) == 4
    for trial, attempt in attempts:
        location = f"tasks/{task_id}/trials/{trial['id']}/attempt-{attempt['number']}/"
        assert attempt["harbor_trial_dir"] == location
        output = {
            key.removeprefix(PREFIX + location): data
            for key, data in stored.items()
            if key.startswith(PREFIX + location)
        }
        assert json.loads(output["result.json"])["trial_name"] == f"attempt-{attempt['number']}"
        if trial["agent"] == "oracle":  # nop's agent writes nothing
            assert "agent/oracle.txt" in output, sorted(output)
        if trial["agent"] == TRAJECTORY_AGENT:  # 12 MiB: uploaded in parts
            assert len(output["agent/big.log"]) == BIG_LOG_BYTES
        rewards = json.loads(output["verifier/reward.json"])
        assert rewards["reward"] == trial["reward"], sorted(output)
    assert {t["harbor_trial_dir"] for t in task["trials"]} == {
        a["harbor_trial_dir"] for _, a in attempts
    }
    # ... and no longer on the worker's disk.
    assert list((elsewhere / "harbor-jobs").rglob("attempt-*")) == []

    # No copy of the task on the submitter's disk; the worker unpacked its own into its cache.
    submitter_tasks = tmp_path / "submitter-tasks"
    assert not submitter_tasks.exists() or list(submitter_tasks.iterdir()) == []
    assert (elsewhere / "task-cache" / sha256 / "task.toml").is_file()
    assert not (elsewhere / "tasks" / task_id).exists()

    # An API process with directories of its own serves results and logs from the bucket, also
    # once the worker and its machine's directories are gone.
    worker.stop()
    shutil.rmtree(elsewhere)
    api_machine = tmp_path / "api-machine"
    api_env = {
        **os.environ,
        **s3_env,
        "ODDISH_TEMPORAL_TASK_QUEUE": task_queue,
        "ODDISH_TASKS_DIR": str(api_machine / "tasks"),
        "ODDISH_HARBOR_JOBS_DIR": str(api_machine / "harbor-jobs"),
        "ODDISH_HOME": str(api_machine / "home"),
    }
    api, url = serve_api(api_env, tmp_path / "api.log", "--no-workers")
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            for trial in task["trials"]:
                result = await http.get(f"/trials/{trial['id']}/result")
                assert result.status_code == 200, result.text
                verifier = result.json()["verifier_result"]
                assert verifier["rewards"]["reward"] == trial["reward"]
                logs = await http.get(f"/trials/{trial['id']}/logs")
                assert logs.status_code == 200, logs.text
                files = logs.json()["files"]
                assert json.loads(files["result.json"])["verifier_result"] == verifier
                assert json.loads(files["verifier/reward.json"]) == trial["rewards"]
                if trial["agent"] == "oracle":
                    assert "agent/oracle.txt" in files, sorted(files)

                # Every file of the output, listed and served as the bucket holds it.
                location = trial["harbor_trial_dir"]
                in_bucket = {
                    key.removeprefix(PREFIX + location): data
                    for key, data in stored.items()
                    if key.startswith(PREFIX + location)
                }
                listing = (await http.get(f"/trials/{trial['id']}/files")).json()
                assert {f["path"]: f["size"] for f in listing["files"]} == {
                    rel: len(data) for rel, data in in_bucket.items()
                }
                for rel in ("result.json", "verifier/reward.json"):
                    served = await http.get(f"/trials/{trial['id']}/files/{rel}")
                    assert served.content == in_bucket[rel]
                trajectory = await http.get(f"/trials/{trial['id']}/trajectory")
                if trial["agent"] == TRAJECTORY_AGENT:
                    assert trajectory.status_code == 200
                    assert trajectory.content == in_bucket["agent/trajectory.json"]
                else:
                    assert trajectory.status_code == 404
            instruction = await http.get(f"/tasks/{task_id}/files/instruction.md")
            assert instruction.content == (EXAMPLES / "partial-credit/instruction.md").read_bytes()

        # ... and so does `oddish pull`, in the layout Harbor's viewer scans.
        pulled_dir = tmp_path / "pulled"
        pulled = subprocess.run(
            [sys.executable, "-m", "oddish", "pull", task_id, "-o", str(pulled_dir), "--json"],
            env={**os.environ, "ODDISH_API_URL": url},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert pulled.returncode == 0, pulled.stderr
        assert json.loads(pulled.stdout)["trials_pulled"] == 4
        scanner = JobScanner(pulled_dir)
        assert sorted(scanner.list_trials(task_id)) == sorted(t["id"] for t in task["trials"])
        for trial in task["trials"]:
            result = scanner.get_trial_result(task_id, trial["id"])
            assert result is not None and result.verifier_result is not None
            assert result.verifier_result.rewards["reward"] == trial["reward"]
    finally:
        api.terminate()
        api.wait(timeout=20)

    # Deleting the task deletes what storage holds of it.
    await task_control.delete_task(task_id, client=temporal_client)
    assert objects(s3_server, bucket, f"{PREFIX}tasks/{task_id}/") == {}


async def test_a_submission_that_fails_leaves_nothing_in_storage(
    s3_server: S3Server, s3_env: dict[str, str], temporal_client: Client
) -> None:
    bucket = s3_env["ODDISH_S3_BUCKET"]
    before = objects(s3_server, bucket)
    # Stored first, then refused by Postgres (no NUL in text): the archive goes again.
    with pytest.raises(DBAPIError):
        await submit(temporal_client, "hello-pass", local(), user="nul\x00user")
    assert objects(s3_server, bucket) == before


def write_link_planting_task(root: Path) -> Path:
    """A task whose solution plants links to /etc/passwd and /root wherever its output is
    collected from: the agent's and the verifier's log directories, the artifacts, /app."""
    task = root / "plants-links"
    for sub in ("environment", "solution", "tests"):
        (task / sub).mkdir(parents=True)
    (task / "instruction.md").write_text("Write /app/done.txt.\n")
    (task / "task.toml").write_text(
        'schema_version = "1.4"\n\n[verifier]\ntimeout_sec = 60.0\n\n[agent]\n'
        'timeout_sec = 60.0\n\n[environment]\nworkdir = "/app"\n'
    )
    (task / "environment" / "Dockerfile").write_text("FROM ubuntu:24.04\nWORKDIR /app\n")
    (task / "solution" / "solve.sh").write_text(
        "#!/bin/bash\n"
        "echo done > /app/done.txt\n"
        "for dir in /logs/agent /logs/artifacts /app; do\n"
        "  ln -s /etc/passwd $dir/passwd\n"
        "  ln -s /root $dir/root\n"
        "done\n"
        "mkdir -p /logs/agent/deeper && ln -s /root /logs/agent/deeper/home\n"
    )
    (task / "tests" / "test.sh").write_text(
        "#!/bin/bash\n"
        "ln -s /etc/passwd /logs/verifier/passwd\n"
        "ln -s /root /logs/verifier/root\n"
        '[ "$(cat /app/done.txt)" = done ] && echo 1 > /logs/verifier/reward.txt '
        "|| echo 0 > /logs/verifier/reward.txt\n"
    )
    return task


async def test_links_to_passwd_and_root_reach_neither_the_bucket_nor_the_api(
    s3_server: S3Server,
    s3_env: dict[str, str],
    start_worker,
    task_queue: str,
    temporal_client: Client,
    tmp_path: Path,
) -> None:
    secret = Path("/root") / f".oddish-test-secret-{secrets.token_hex(6)}"
    secret.write_text(f"SECRET {secret.name}\n")
    try:
        start_worker(**s3_env)
        task = write_link_planting_task(tmp_path)
        task_id = await create_task(
            TaskSubmission(
                task_path=task,
                configs=[local(artifacts=["/app/passwd", "/app/root"])],
                run_analysis=False,
            ),
            client=temporal_client,
        )
        [trial] = (await wait_for_task(temporal_client, task_id))["trials"]
        assert trial["status"] == "success" and trial["reward"] == 1.0, trial

        passwd_line = Path("/etc/passwd").read_bytes().splitlines()[0]
        stored = objects(s3_server, s3_env["ODDISH_S3_BUCKET"], f"{PREFIX}tasks/{task_id}/")
        assert any(key.endswith("/result.json") for key in stored)
        for key, data in stored.items():
            assert passwd_line not in data, key
            assert secret.name.encode() not in data, key
            assert not key.endswith(("/passwd", "/root")), key

        env = {
            **os.environ,
            **s3_env,
            "ODDISH_TEMPORAL_TASK_QUEUE": task_queue,
            "ODDISH_HOME": str(tmp_path / "api-home"),
        }
        api, url = serve_api(env, tmp_path / "api.log", "--no-workers")
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                listing = (await http.get(f"/trials/{trial['id']}/files")).json()
                paths = [f["path"] for f in listing["files"]]
                assert not [p for p in paths if p.rsplit("/", 1)[-1] in ("passwd", "root")]
                for planted in ("agent/passwd", "agent/root/" + secret.name, "verifier/passwd"):
                    answer = await http.get(f"/trials/{trial['id']}/files/{planted}")
                    assert answer.status_code == 404, planted
                logs = (await http.get(f"/trials/{trial['id']}/logs")).text
                assert passwd_line.decode() not in logs and secret.name not in logs
        finally:
            api.terminate()
            api.wait(timeout=20)
    finally:
        secret.unlink()
