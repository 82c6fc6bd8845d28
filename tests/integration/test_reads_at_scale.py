"""The experiment and task-list views aggregated by Postgres give what the Python computation
over the trial rows gives; their pages hold every task and trial exactly once; ``oddish status
--experiment`` shows every task; an experiment is cancelled and deleted by statements, not rows.

The rows are written directly (no workflow runs): the reads need only Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from oddish import queue, task_control
from oddish.db import records
from oddish.db.connection import get_session
from oddish.db.models import (
    AnalysisModel,
    ExperimentModel,
    TaskModel,
    TrialAttemptModel,
    TrialModel,
    VerdictModel,
)
from oddish.outcomes import trial_result
from oddish.statuses import RETRYABLE_RESULTS, TERMINAL_JOB_STATUSES
from oddish.trial_stats import group_by_agent_model, group_stats

pytestmark = pytest.mark.timeout(300)

N_TASKS = 23
# (status, reward, outcome) in turn: finished with and without rewards (a reward of None
# counts as 0), rewards at, above and below the pass threshold, unfinished trials, no outcome.
MIX: list[tuple[str, float | None, str | None]] = [
    ("success", 1.0, "success"),
    ("success", 0.5, "partial"),
    ("success", 1.5, "success"),
    ("failed", None, "agent_timeout"),
    ("failed", 0.0, "task_failure"),
    ("cancelled", None, "cancelled"),
    ("queued", None, None),
    ("running", None, None),
    ("retrying", None, None),
    ("success", 0.999, None),
    ("pending", None, None),
    ("failed", None, "infrastructure_error"),
    ("failed", 0.0, "verifier_error"),
    ("success", None, "success"),
]
AGENTS = [("oracle", None), ("claude-code", "anthropic/claude-sonnet-4-5"), ("nop", "")]


def _trial(task_id: str, t: int, i: int) -> TrialModel:
    status, reward, outcome = MIX[(t * 3 + i) % len(MIX)]
    agent, model = AGENTS[(t + i) % len(AGENTS)]
    return TrialModel(
        id=f"{task_id}-trial-{i}",
        task_id=task_id,
        index=i,
        agent=agent,
        model=model,
        queue_key=model or "default",
        environment="local",
        spec={},
        status=status,
        reward=reward,
        outcome=outcome,
        error_type="AgentTimeoutError" if outcome == "agent_timeout" else None,
        run_number=1,
    )


async def _seed(experiment_id: str, *, with_history: bool = False) -> list[str]:
    """An experiment of N_TASKS tasks of 0 to 14 trials of the mixed statuses; returns the
    task ids."""
    task_ids = []
    async with get_session() as session:
        session.add(ExperimentModel(id=experiment_id, name=f"name of {experiment_id}"))
        await session.flush()
        for t in range(N_TASKS):
            task_id = f"{experiment_id}-task-{t:02d}"
            task_ids.append(task_id)
            session.add(
                TaskModel(
                    id=task_id,
                    experiment_id=experiment_id,
                    name=f"task {t}",
                    task_path=f"tasks/{task_id}/x.tar.gz",
                    status="running" if t % 2 else "completed",
                    priority=0,
                    run_analysis=False,
                    workflow_id=f"task/{task_id}",
                )
            )
            await session.flush()
            trials = [_trial(task_id, t, i) for i in range(t % 15)]
            session.add_all(trials)
            await session.flush()
            if with_history:
                for trial in trials:
                    session.add(
                        TrialAttemptModel(
                            trial_id=trial.id,
                            number=1,
                            run_number=1,
                            temporal_attempt=1,
                            status="running",
                            started_at=records.now(),
                        )
                    )
                    # The judge answered some analyses (at a cost, or failing) and verdicts.
                    judged = trial.index % 3 == 0
                    session.add(
                        AnalysisModel(
                            trial_id=trial.id,
                            status="success",
                            model="judge/model" if judged else None,
                            n_input_tokens=100 + trial.index if judged else None,
                            n_output_tokens=10 if judged else None,
                            cost_usd=0.25 if judged and trial.index % 2 else None,
                            error_message="malformed" if judged and t % 4 == 0 else None,
                        )
                    )
                session.add(
                    VerdictModel(
                        task_id=task_id,
                        status="success",
                        summary="s",
                        model="judge/model" if t % 5 == 0 else None,
                        n_input_tokens=7 if t % 5 == 0 else None,
                        cost_usd=0.5 if t == 5 else None,
                    )
                )
        await session.commit()
    return task_ids


async def _trials_by_task(experiment_id: str) -> dict[str, list[TrialModel]]:
    async with get_session() as session:
        rows = await session.execute(
            select(TrialModel)
            .join(TaskModel, TaskModel.id == TrialModel.task_id)
            .where(TaskModel.experiment_id == experiment_id)
        )
        by_task: dict[str, list[TrialModel]] = {}
        for trial in rows.scalars().all():
            by_task.setdefault(trial.task_id, []).append(trial)
        return by_task


def _approx(stats: Any) -> Any:
    """Sums in another order differ in the last bits of a float."""
    if isinstance(stats, dict):
        return {k: _approx(v) for k, v in stats.items()}
    if isinstance(stats, list):
        return [_approx(v) for v in stats]
    return pytest.approx(stats) if isinstance(stats, float) else stats


def _matrix_of(trials: list[TrialModel]) -> dict[str, dict[str, Any]]:
    """The matrix's cells of one task, counted over its trial rows."""
    cells: dict[str, list[Any]] = {}
    for t in trials:
        cells.setdefault(f"{t.agent}/{t.model or '-'}", []).append(
            trial_result(t.status, t.outcome, t.reward)
        )
    matrix = {}
    for key, results in cells.items():
        scored = sum(r in ("passed", "partial", "failed") for r in results)
        passed = results.count("passed")
        matrix[key] = {
            "trials": len(results),
            "finished": sum(r is not None for r in results),
            "scored": scored,
            "passed": passed,
            "errored": sum(r in ("error", "cancelled") for r in results),
            "pass_rate": passed / scored if scored else None,
        }
    return matrix


def _new_experiment() -> str:
    return f"reads-{os.getpid()}-{time.monotonic_ns()}"


async def test_sql_aggregates_equal_the_python_ones(migrated: None) -> None:
    experiment_id = _new_experiment()
    task_ids = await _seed(experiment_id, with_history=True)
    by_task = await _trials_by_task(experiment_id)
    trials = [t for ts in by_task.values() for t in ts]
    assert len(trials) > 100 and {t.status for t in trials} >= {"success", "failed", "queued"}

    seen: dict[str, dict[str, Any]] = {}
    offset: int | None = 0
    while offset is not None:
        view = await queue.get_experiment(experiment_id, tasks_limit=5, tasks_offset=offset)
        assert view["tasks_total"] == N_TASKS
        for task in view["tasks"]:
            assert task["id"] not in seen
            seen[task["id"]] = task
        # The matrix holds the page's tasks, each cell counted by result as Python counts.
        assert set(view["matrix"]) == {t["id"] for t in view["tasks"] if by_task.get(t["id"])}
        for task_id, cells in view["matrix"].items():
            assert cells == _matrix_of(by_task[task_id]), task_id
        offset = view["tasks_next_offset"]
    assert sorted(seen) == sorted(task_ids)

    assert view["overall"] == _approx(group_stats(trials))
    async with get_session() as session:
        usage = await records.judge_usage(session, experiment_id=experiment_id)
    assert usage["calls"] > 0 and usage["errors"] > 0 and usage["cost_usd"]
    assert view["judge_usage"] == {**usage, "cost_usd": pytest.approx(usage["cost_usd"])}
    # Every result is in the mix, so SQL's rule and Python's are compared on each.
    results = view["overall"]["scores"]["results"]
    assert all(results.values()) and len(results) == 7, results
    assert view["overall"]["scores"]["pass_at_k"], "tasks with scored trials give pass@k"
    expected = group_by_agent_model(trials)
    assert view["by_agent_model"].keys() == expected.keys()
    for key, stats in expected.items():
        assert view["by_agent_model"][key] == _approx(stats), key

    for task_id in task_ids:
        own = by_task.get(task_id, [])
        finished = [t for t in own if t.status in TERMINAL_JOB_STATUSES]
        summary = seen[task_id]
        assert summary["trials_count"] == len(own)
        assert summary["trials_finished"] == len(finished)
        assert summary["trial_status_counts"] == {
            s: sum(t.status == s for t in own) for s in {t.status for t in own}
        }
        mean = group_stats(finished)["mean_reward"]
        assert summary["mean_reward"] == (None if mean is None else pytest.approx(mean))

    # The experiments list: pass@1 over the scored trials, as the scores count them.
    listed_experiment = next(e for e in await queue.list_experiments() if e["id"] == experiment_id)
    scores = view["overall"]["scores"]
    assert {
        k: listed_experiment[k]
        for k in ("trials_count", "trials_scored", "trials_passed", "trials_errored")
    } == {
        "trials_count": scores["trials"],
        "trials_scored": scores["scored"],
        "trials_passed": scores["passed"],
        "trials_errored": scores["errored"],
    }
    assert listed_experiment["pass_at_1"] == pytest.approx(scores["pass_at_1"]["estimate"])
    assert listed_experiment["trials_finished"] == sum(
        t.status in TERMINAL_JOB_STATUSES for t in trials
    )

    # The task list gives the same summaries, and pages every task once.
    listed: list[dict[str, Any]] = []
    offset = 0
    while offset is not None:
        page = await queue.list_tasks(experiment_id=experiment_id, limit=4, offset=offset)
        listed += page["tasks"]
        offset = page["next_offset"]
    assert sorted(t["id"] for t in listed) == sorted(task_ids)
    for task in listed:
        assert task == _approx(seen[task["id"]])

    # An experiment without trials: nothing to average.
    empty = _new_experiment()
    async with get_session() as session:
        session.add(ExperimentModel(id=empty, name=empty))
        await session.commit()
    view = await queue.get_experiment(empty)
    assert view["tasks"] == [] and view["overall"] == group_stats([])


async def test_trial_pages_hold_every_trial_once(migrated: None) -> None:
    experiment_id = _new_experiment()
    await _seed(experiment_id)
    expected = {t.id for ts in (await _trials_by_task(experiment_id)).values() for t in ts}
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await queue.get_experiment_trials(experiment_id, after=after, limit=13)
        pages += 1
        seen += [t["id"] for t in page["trials"]]
        after = page["next_after"]
        if after is None:
            break
    assert len(seen) == len(expected) and set(seen) == expected and pages > 5
    with pytest.raises(queue.BadCursor):
        await queue.get_experiment_trials(experiment_id, after="no-index-here")
    with pytest.raises(records.RecordNotFound):
        await queue.get_experiment_trials("no-such-experiment")


@pytest.fixture
def api_process(oddish_env: dict[str, str], work_dir, migrated: None) -> Iterator[str]:
    from helpers import serve_api

    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": "reads-no-worker"}
    process, url = serve_api(env, work_dir / f"api-reads-{os.getpid()}.log", "--no-workers")
    yield url
    process.terminate()
    process.wait(timeout=20)


def _oddish(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ODDISH_API_KEY"}
    env.update(ODDISH_API_URL=api_url, COLUMNS="250", HARBOR_TELEMETRY="0")
    return subprocess.run(
        [sys.executable, "-m", "oddish", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_status_of_an_experiment_shows_every_task(api_process: str) -> None:
    import json

    experiment_id = _new_experiment()
    task_ids = await _seed(experiment_id)
    by_task = await _trials_by_task(experiment_id)

    shown = _oddish(api_process, "status", "--experiment", experiment_id, "--json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)
    assert listed["experiment"] == experiment_id
    assert sorted(t["id"] for t in listed["tasks"]) == sorted(task_ids)
    for task in listed["tasks"]:
        own = by_task.get(task["id"], [])
        assert sorted(t["id"] for t in task["trials"]) == sorted(t.id for t in own)
        assert task["trials_count"] == len(own)
        for trial in task["trials"]:
            assert {"agent", "model", "status", "reward", "error"} <= set(trial)

    table = _oddish(api_process, "status", "--experiment", experiment_id)
    assert table.returncode == 0, table.stderr
    assert all(task_id in table.stdout for task_id in task_ids)
    assert f"{(N_TASKS + 1) // 2}/{N_TASKS} tasks done" in table.stdout  # the completed ones
    total = sum(len(ts) for ts in by_task.values())
    assert f"{total} trials" in table.stdout

    async with httpx.AsyncClient(base_url=api_process) as http:
        view = (await http.get(f"/experiments/{experiment_id}", params={"tasks_limit": 0})).json()
        assert view["tasks"] == [] and view["overall"]["trials"] == total
        assert (
            await http.get(f"/experiments/{experiment_id}/trials", params={"after": "x"})
        ).status_code == 422
        assert (await http.get("/experiments/nope/trials")).status_code == 404


async def _count(model: type, experiment_id: str) -> int:
    async with get_session() as session:
        query = select(func.count()).select_from(model)
        if model is TaskModel:
            query = query.where(TaskModel.experiment_id == experiment_id)
        elif model in (TrialModel, VerdictModel):
            query = query.join(TaskModel, TaskModel.id == model.task_id).where(
                TaskModel.experiment_id == experiment_id
            )
        else:
            query = (
                query.join(TrialModel, TrialModel.id == model.trial_id)
                .join(TaskModel, TaskModel.id == TrialModel.task_id)
                .where(TaskModel.experiment_id == experiment_id)
            )
        return (await session.execute(query)).scalar_one()


async def test_cancel_and_delete_an_experiment_by_statements(temporal_client: Client) -> None:
    """No workflow runs for these tasks: cancel settles each unfinished task's records, delete
    removes every row of the experiment."""
    experiment_id = _new_experiment()
    task_ids = await _seed(experiment_id, with_history=True)
    unfinished = [t for i, t in enumerate(task_ids) if i % 2]

    async with get_session() as session:
        retryable = await records.experiment_task_ids(
            session, experiment_id, with_retryable_trials=True
        )
    by_task = await _trials_by_task(experiment_id)
    # Tasks with a finished trial that did not pass, a reward below 1 recorded as success too.
    assert sorted(retryable) == sorted(
        t
        for t, ts in by_task.items()
        if any(trial_result(x.status, x.outcome, x.reward) in RETRYABLE_RESULTS for x in ts)
    )
    assert any(
        x.status == "success" and trial_result(x.status, x.outcome, x.reward) == "partial"
        for ts in by_task.values()
        for x in ts
    )

    cancelled = await task_control.cancel_experiment(experiment_id, client=temporal_client)
    assert sorted(cancelled) == sorted((t, "cancelled") for t in unfinished)
    after = await _trials_by_task(experiment_id)
    for task_id in unfinished:
        assert all(t.status in TERMINAL_JOB_STATUSES for t in after.get(task_id, []))

    assert await _count(TrialAttemptModel, experiment_id) > 0
    deleted = await task_control.delete_experiment(experiment_id, client=temporal_client)
    assert deleted == N_TASKS
    for model in (TaskModel, TrialModel, TrialAttemptModel, AnalysisModel, VerdictModel):
        assert await _count(model, experiment_id) == 0, model
    async with get_session() as session:
        assert await session.get(ExperimentModel, experiment_id) is None
        with pytest.raises(records.RecordNotFound):
            await records.experiment_task_ids(session, experiment_id)
