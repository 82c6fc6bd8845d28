"""The original Oddish's routes and query parameters on our API, against the real stack: the
bare list of GET /tasks?experiment_id=, POST /tasks/cancel, GET /tasks/browse, GET /dashboard,
GET /tasks/{id}/versions[/{v}], DELETE /trials/{id}, and a sweep of an existing task."""

from __future__ import annotations

import io
import math
import secrets
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, RootModel, TypeAdapter
from sqlalchemy import update

from helpers import EXAMPLES, api_on_own_queue
from oddish.api import views
from oddish.api.original_routes import BrowsePage, Dashboard, TaskVersionView
from oddish.db.connection import get_session
from oddish.db.models import TrialModel

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def api(oddish_env: dict[str, str], work_dir: Path, migrated: None) -> Iterator[httpx.Client]:
    with (
        api_on_own_queue(oddish_env, work_dir, "routes") as (url, _),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        yield client


def archive_of(task_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(task_dir, arcname=task_dir.name)
    return buffer.getvalue()


def submit(
    api: httpx.Client, task_dir: Path, *, experiment: str, sleep: float | None = None, n: int = 1
) -> dict[str, Any]:
    upload = api.post("/tasks/upload", files={"file": ("t.tar.gz", archive_of(task_dir))})
    assert upload.status_code == 200, upload.text
    env = {"ODDISH_SLEEP_SECONDS": str(sleep)} if sleep is not None else {}
    sweep = api.post(
        "/tasks/sweep",
        json={
            "upload_id": upload.json()["upload_id"],
            "configs": [{"agent": "oracle", "n_trials": n, "agent_config": {"env": env}}],
            "harbor": {"environment": "local"},
            "experiment_id": experiment,
            "submission_key": str(uuid.uuid4()),
        },
    )
    assert sweep.status_code == 200, sweep.text
    return sweep.json()


def wait_until(api: httpx.Client, task_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while True:
        task = api.get(f"/tasks/{task_id}").json()
        if task["status"] in statuses:
            return task
        assert time.monotonic() < deadline, task["status"]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def finished(api: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two versions of one task name (the second a changed copy), three tasks in all, done."""
    experiment = f"exp-routes-{secrets.token_hex(3)}"
    name = f"versioned-{secrets.token_hex(3)}"
    first = tmp_path_factory.mktemp("v1") / name
    shutil.copytree(EXAMPLES / "hello-pass", first)
    second = tmp_path_factory.mktemp("v2") / name
    shutil.copytree(first, second)
    (second / "instruction.md").write_text("Changed: write hello to /app/greeting.txt.\n")
    tasks = [
        submit(api, first, experiment=experiment),
        submit(api, first, experiment=experiment, n=2),
        submit(api, second, experiment=experiment),
    ]
    for task in tasks:
        wait_until(api, task["id"], {"completed"})
    return {"experiment": experiment, "name": name, "ids": [t["id"] for t in tasks]}


def test_tasks_by_experiment_id_is_the_original_bare_list(
    api: httpx.Client, finished: dict[str, Any]
) -> None:
    ours = api.get("/tasks", params={"experiment": finished["experiment"]}).json()
    assert ours["total"] == 3 and ours["next_offset"] is None

    listed = api.get("/tasks", params={"experiment_id": finished["experiment"]})
    assert listed.status_code == 200
    tasks = listed.json()
    assert isinstance(tasks, list)
    assert sorted(t["id"] for t in tasks) == sorted(finished["ids"])
    assert all(t["trials"] and t["experiment_id"] == finished["experiment"] for t in tasks)

    brief = api.get(
        "/tasks", params={"experiment_id": finished["experiment"], "include_trials": "false"}
    ).json()
    assert sorted(t["id"] for t in brief) == sorted(finished["ids"])
    assert all("trials" not in t for t in brief)
    assert len(api.get("/tasks", params={"include_trials": "false", "limit": 2}).json()) == 2
    refused = api.get("/tasks", params={"include_trials": "true", "limit": 101})
    assert refused.status_code == 422 and "at most 100" in refused.text


def test_versions_and_browse(api: httpx.Client, finished: dict[str, Any]) -> None:
    first, again, changed = finished["ids"]
    versions = api.get(f"/tasks/{first}/versions").json()
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["id"] == first and versions[1]["tasks_count"] == 2
    assert versions[0]["id"] == changed and versions[0]["tasks_count"] == 1
    assert versions[0]["content_hash"] != versions[1]["content_hash"]
    assert api.get(f"/tasks/{again}/versions").json() == [{**v, "task_id": again} for v in versions]
    one = api.get(f"/tasks/{changed}/versions/1").json()
    assert one["id"] == first and one["task_id"] == changed
    assert api.get(f"/tasks/{first}/versions/3").status_code == 404
    assert api.get("/tasks/task-nope/versions").status_code == 404
    assert api.get(f"/tasks/{first}/versions/0").status_code == 422

    page = api.get("/tasks/browse", params={"query": finished["name"]}).json()
    assert page["has_more"] is False and page["limit"] == 25 and page["offset"] == 0
    (item,) = page["items"]
    assert item["id"] == changed and item["name"] == finished["name"]
    assert item["current_version"] == 2 and item["version_count"] == 2
    assert item["tasks_count"] == 3 and item["total_trials"] == 4
    assert item["completed_trials"] == 4 and item["failed_trials"] == 0
    assert item["reward_success"] == 4 and item["reward_total"] == 4
    assert [e["id"] for e in item["experiments"]] == [finished["experiment"]]
    # A LIKE wildcard in the query is matched literally.
    assert api.get("/tasks/browse", params={"query": "%"}).json()["items"] == []
    assert api.get("/tasks/browse", params={"limit": 101}).status_code == 422


def test_dashboard_counts_per_queue_and_status(api: httpx.Client, finished: dict[str, Any]) -> None:
    board = api.get("/dashboard", params={"tasks_limit": 2, "experiments_limit": 1}).json()
    assert board["queues"] == api.get("/limits").json()["queues"]
    assert board["pipeline"]["tasks"]["completed"] >= 3
    assert board["pipeline"]["trials"]["success"] >= 4
    assert len(board["tasks"]) == 2 and board["has_more"] is True
    every = api.get("/experiments").json()
    assert board["experiments"] == every[:1]
    assert board["experiments_has_more"] is (len(every) > 1)
    second = api.get("/dashboard", params={"experiments_offset": 1, "experiments_limit": 100})
    assert second.json()["experiments"] == every[1:101]
    assert api.get("/dashboard", params={"tasks_limit": 0}).status_code == 422


def test_batch_cancel_and_deleting_a_trial(api: httpx.Client, finished: dict[str, Any]) -> None:
    experiment = f"exp-cancel-{secrets.token_hex(3)}"
    running = submit(api, EXAMPLES / "sleep", experiment=experiment, sleep=60)
    deadline = time.monotonic() + 120
    while api.get(f"/tasks/{running['id']}").json()["trials"][0]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    trial_id = api.get(f"/tasks/{running['id']}").json()["trials"][0]["id"]
    busy = api.delete(f"/trials/{trial_id}")
    assert busy.status_code == 409 and "cancel the task first" in busy.json()["detail"]

    answer = api.post("/tasks/cancel", json={"task_ids": [running["id"], "task-nope"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "cancelled" and body["task_ids"] == [running["id"]]
    assert body["not_found_task_ids"] == ["task-nope"] and body["tasks_found"] == 1
    assert body["tasks_cancelled"] == 1
    wait_until(api, running["id"], {"cancelled"})

    assert api.post("/tasks/cancel", json={"task_ids": ["task-nope"]}).status_code == 404
    assert api.post("/tasks/cancel", json={"task_ids": []}).status_code == 422

    gone = api.delete(f"/trials/{trial_id}")
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"id": trial_id, "task_id": running["id"], "deleted": True}
    assert api.get(f"/trials/{trial_id}").status_code == 404
    assert api.get(f"/tasks/{running['id']}").json()["trials"] == []
    assert api.delete(f"/trials/{trial_id}").status_code == 404

    # A finished trial of a finished task, with its stored output.
    done = api.get(f"/tasks/{finished['ids'][1]}").json()["trials"][1]["id"]
    assert api.get(f"/trials/{done}/result").status_code == 200
    assert api.delete(f"/trials/{done}").status_code == 200
    assert len(api.get(f"/tasks/{finished['ids'][1]}").json()["trials"]) == 1


def test_sweep_of_an_existing_task(api: httpx.Client, finished: dict[str, Any]) -> None:
    source = finished["ids"][2]
    body = {"task_id": source, "configs": [{"agent": "oracle"}], "harbor": {"environment": "local"}}
    made = api.post("/tasks/sweep", json=body)
    assert made.status_code == 200, made.text
    task = wait_until(api, made.json()["id"], {"completed"})
    assert task["experiment_id"] == finished["experiment"] and task["name"] == finished["name"]
    assert api.get(f"/tasks/{source}/versions").json()[0]["tasks_count"] == 2

    both = api.post("/tasks/sweep", json={**body, "upload_id": "x"})
    assert both.status_code == 422 and "upload_id" in both.text
    missing = api.post("/tasks/sweep", json={**body, "task_id": "task-nope"})
    assert missing.status_code == 404


def declared(model: type[BaseModel], data: Any) -> None:
    """``data`` is valid for ``model`` and every field in it, at any depth, is declared: the
    views let unknown fields through (nothing is dropped), so this is where a field a route
    returns but its model lacks is caught."""
    undeclared: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, RootModel):
            walk(value.root, where)
        elif isinstance(value, BaseModel):
            undeclared.extend(f"{where}.{name}" for name in value.model_extra or {})
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{where}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")

    walk(TypeAdapter(model).validate_python(data), model.__name__)
    assert undeclared == [], f"fields the response models do not declare: {undeclared}"


def test_answers_match_their_response_models(api: httpx.Client, finished: dict[str, Any]) -> None:
    task_id = finished["ids"][2]
    experiment = finished["experiment"]
    task = api.get(f"/tasks/{task_id}").json()
    trial_id = task["trials"][0]["id"]
    answers: list[tuple[Any, str, dict[str, Any]]] = [
        (views.Health, "/health", {}),
        (views.TaskList, "/tasks", {}),
        (views.TaskList, "/tasks", {"experiment_id": experiment}),
        (views.TaskList, "/tasks", {"experiment_id": experiment, "include_trials": "false"}),
        (views.TaskDetail, f"/tasks/{task_id}", {}),
        (views.Trial, f"/tasks/{task_id}/trials/0", {}),
        (views.Trial, f"/trials/{trial_id}", {}),
        (views.TrialLogs, f"/trials/{trial_id}/logs", {}),
        (views.HarborTrialResult, f"/trials/{trial_id}/result", {}),
        (list[views.ExperimentListed], "/experiments", {}),
        (views.Experiment, f"/experiments/{experiment}", {}),
        (views.ExperimentTrials, f"/experiments/{experiment}/trials", {}),
        (views.Limits, "/limits", {}),
        (BrowsePage, "/tasks/browse", {}),
        (Dashboard, "/dashboard", {}),
        (list[TaskVersionView], f"/tasks/{task_id}/versions", {}),
    ]
    for model, path, params in answers:
        answer = api.get(path, params=params)
        assert answer.status_code == 200, (path, answer.text)
        declared(model, answer.json())
    assert task["trials"][0]["attempts"] and task["verdict"] is not None

    declared(views.LimitSet, api.put("/limits/test%2Fviews", json={"limit": 3}).json())
    declared(views.TaskCancelled, api.post(f"/tasks/{task_id}/cancel").json())
    declared(views.ExperimentCancelled, api.post(f"/experiments/{experiment}/cancel").json())
    upload = api.post(
        "/tasks/upload", files={"file": ("t.tar.gz", archive_of(EXAMPLES / "hello-pass"))}
    )
    declared(views.Uploaded, upload.json())
    sweep = api.post(
        "/tasks/sweep",
        json={
            "upload_id": upload.json()["upload_id"],
            "configs": [{"agent": "oracle"}],
            "harbor": {"environment": "local"},
        },
    )
    assert sweep.status_code == 200 and "warning" not in sweep.json()
    declared(views.SweepCreated, sweep.json())
    wait_until(api, sweep.json()["id"], {"completed", "failed"})
    declared(views.TaskDeleted, api.delete(f"/tasks/{sweep.json()['id']}").json())


async def test_a_nan_reward_reads_as_null_in_every_answer(
    api: httpx.Client, tmp_path: Path
) -> None:
    """A verifier can write "nan" as its reward: every read that shows it, or a figure made
    from it, still answers (JSON has no NaN; the answers give null)."""
    experiment = f"exp-nan-{secrets.token_hex(3)}"
    task_id = submit(api, EXAMPLES / "hello-pass", experiment=experiment)["id"]
    trial_id = wait_until(api, task_id, {"completed"})["trials"][0]["id"]
    async with get_session() as session:
        await session.execute(
            update(TrialModel).where(TrialModel.id == trial_id).values(reward=math.nan)
        )
        await session.commit()

    for path, params in [
        ("/tasks", {}),
        ("/tasks", {"experiment": experiment}),
        ("/tasks", {"experiment_id": experiment}),
        ("/tasks", {"experiment_id": experiment, "include_trials": "false"}),
        ("/tasks", {"include_trials": "false"}),
        (f"/tasks/{task_id}", {}),
        (f"/trials/{trial_id}", {}),
        ("/experiments", {}),
        (f"/experiments/{experiment}", {}),
        (f"/experiments/{experiment}/trials", {}),
        ("/tasks/browse", {}),
        ("/dashboard", {}),
        (f"/ui/experiments/{experiment}", {}),
        (f"/ui/tasks/{task_id}", {}),
        (f"/ui/trials/{trial_id}", {}),
    ]:
        answer = api.get(path, params=params)
        assert answer.status_code == 200, (path, params, answer.text)
        assert "NaN" not in answer.text, (path, params)
    trial = api.get(f"/trials/{trial_id}").json()
    assert trial["reward"] is None
    [summary] = api.get(
        "/tasks", params={"experiment_id": experiment, "include_trials": "false"}
    ).json()
    assert summary["mean_reward"] is None
