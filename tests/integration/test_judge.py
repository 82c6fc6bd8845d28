"""The judge on the real stack: workers call an OpenAI-compatible server on 127.0.0.1 (written in
tests/llm_server.py) through LiteLLM, holding slots of the judge model's queue key.

Each test judges with a model name of its own, so its limit and its slot rows are its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from helpers import (
    EXAMPLES,
    check_history,
    local,
    poll,
    submit,
    using_settings,
    wait_for_task,
)
from llm_server import JudgeServer, judge_server_fixture  # noqa: F401  (the fixture)
from oddish import queue
from oddish.judge.models import JudgeNotConfigured
from oddish.queue import create_task
from oddish.schemas import TaskSubmission
from oddish.workflows.judge_again import judge_again_workflow_id
from trajectory_agent import HEAD_MARKER, MIDDLE_MARKER, TAIL_MARKER

pytestmark = pytest.mark.timeout(600)

TESTS_DIR = Path(__file__).resolve().parents[1]
BRITTLE = TESTS_DIR / "tasks" / "brittle-greeting"
API_KEY = "judge-test-key"


@contextlib.contextmanager
def judge_settings(server: JudgeServer, **extra: str) -> Iterator[dict[str, str]]:
    """Settings naming a judge model of this test's own on ``server``, for this process and the
    workers the test starts; the previous settings come back afterwards."""
    env = {
        "ODDISH_ANALYSIS_MODEL": f"openai/judge-{secrets.token_hex(3)}",
        "ODDISH_ANALYSIS_API_BASE": server.url,
        "ODDISH_ANALYSIS_API_KEY": API_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **extra,
    }
    with using_settings(**env):
        yield env


@pytest.fixture
def judge(judge_server: JudgeServer) -> Iterator[dict[str, str]]:
    with judge_settings(judge_server) as env:
        yield env


def served_name(model: str) -> str:
    """The name the server receives: LiteLLM drops the provider."""
    return model.split("/", 1)[1]


def analyses(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t["analysis"] for t in task["trials"]}


def oddish_cli(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ODDISH_API_KEY"}
    env.update(ODDISH_API_URL=api, COLUMNS="250", HARBOR_TELEMETRY="0")
    return subprocess.run(
        [sys.executable, "-m", "oddish", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_the_judge_tells_a_brittle_task_from_a_sound_one(
    api: str,
    start_worker,
    temporal_client: Client,
    judge_server: JudgeServer,
    judge: dict[str, str],
) -> None:
    start_worker(**judge)
    model = judge["ODDISH_ANALYSIS_MODEL"]
    brittle = await create_task(
        TaskSubmission(task_path=BRITTLE, configs=[local("oracle", 2)], run_analysis=True),
        client=temporal_client,
    )
    sound = await submit(
        temporal_client, "hello-pass", local("oracle"), local("nop"), run_analysis=True
    )
    brittle_task = await wait_for_task(temporal_client, brittle)
    sound_task = await wait_for_task(temporal_client, sound)
    await check_history(temporal_client, brittle, "judged")

    for task in (brittle_task, sound_task):
        assert task["status"] == "completed", task
        assert task["analysis_model"] == task["verdict_model"] == model
    # The brittle task's oracle fails, and the judge blames the task.
    for trial in brittle_task["trials"]:
        assert trial["reward"] == 0.0 and trial["outcome"] == "task_failure"
        analysis = trial["analysis"]
        assert analysis["status"] == "success"
        assert analysis["classification"] == "task_failure"  # the rule-based one stands beside
        judged = analysis["judge"]
        assert judged["classification"] == "BAD_FAILURE", judged
        assert judged["subtype"] == "Rigid/Brittle Tests"
        assert served_name(model) in judged["evidence"]
        assert judged["model"] == model and judged["error"] is None
        assert judged["n_input_tokens"] > 0 and judged["n_output_tokens"] > 0
    verdict = brittle_task["verdict"]["judge"]
    assert verdict["is_good"] is False and verdict["primary_issue"] == "Rigid/Brittle Tests"
    assert brittle_task["verdict"]["summary"] == "0/2 trials passed (mean reward 0.000)"
    # The sound task: the oracle succeeds, nop fails fairly, the task is good.
    by_agent = {t["agent"]: t["analysis"]["judge"] for t in sound_task["trials"]}
    assert by_agent["oracle"]["classification"] == "GOOD_SUCCESS"
    assert by_agent["nop"]["classification"] == "GOOD_FAILURE"
    assert sound_task["verdict"]["judge"]["is_good"] is True
    assert sound_task["judge_usage"]["calls"] == 3 and sound_task["judge_usage"]["errors"] == 0

    # What the judge was shown: the facts, the task's tests, the verifier's words; with the key.
    requests = judge_server.requests
    assert len(requests) == 6  # 4 analyses and 2 verdicts: nothing asked twice
    for request in requests:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        assert request.model == served_name(model)
    brittle_prompts = [r.prompt for r in requests if "greeting.txt" in r.prompt]
    analysis_prompts = [p for p in brittle_prompts if "Verified reward: 0.0" in p]
    assert len(analysis_prompts) == 2
    for prompt in analysis_prompts:
        assert "BRITTLE on purpose" in prompt  # tests/test.sh
        assert "greeting.txt is not exactly" in prompt  # the verifier's output
    assert {r.schema_name for r in requests} == {"trial_analysis", "task_verdict"}

    # The terminal shows it: the judge's class per trial, the task needing review first.
    shown = oddish_cli(api, "status", brittle)
    assert shown.returncode == 0, shown.stderr
    assert "BAD_FAILURE · Rigid/Brittle Tests" in shown.stdout
    assert "needs review (high): Rigid/Brittle Tests" in shown.stdout
    listed = oddish_cli(api, "status", "--experiment", brittle_task["experiment_id"])
    assert listed.returncode == 0, listed.stderr
    assert "needs review" in listed.stdout


async def test_the_judges_limit_holds_across_workers(
    start_worker, temporal_client: Client, judge_server: JudgeServer, judge: dict[str, str]
) -> None:
    model = judge["ODDISH_ANALYSIS_MODEL"]
    await queue.set_queue_limit(model, 2)
    judge_server.delay_sec = 0.4
    start_worker(**judge)
    start_worker(**judge)
    task_id = await submit(temporal_client, "hello-pass", local("nop", 12), run_analysis=True)
    task = await wait_for_task(temporal_client, task_id)

    assert task["status"] == "completed"
    assert all(a["judge"]["classification"] == "GOOD_FAILURE" for a in analyses(task).values())
    assert len(judge_server.requests) == 13
    print(f"judge requests in flight at most: {judge_server.max_in_flight}")
    assert judge_server.max_in_flight == 2


async def test_a_busy_provider_costs_time_not_analyses(
    start_worker, temporal_client: Client, judge_server: JudgeServer, judge: dict[str, str]
) -> None:
    judge_server.rate_limit_next(3, retry_after=1)
    judge_server.server_error_next(1)
    start_worker(**judge)
    task_id = await submit(temporal_client, "hello-pass", local("oracle", 2), run_analysis=True)
    task = await wait_for_task(temporal_client, task_id)

    assert task["status"] == "completed"
    judged = [a["judge"] for a in analyses(task).values()]
    assert [j["classification"] for j in judged] == ["GOOD_SUCCESS", "GOOD_SUCCESS"]
    assert all(j["error"] is None for j in judged)
    retries = sum(j.get("provider_retries", 0) for j in judged) + (
        task["verdict"]["judge"].get("provider_retries", 0)
    )
    assert retries == 4
    statuses = [r.status for r in judge_server.requests]
    assert statuses.count(429) == 3 and statuses.count(500) == 1 and statuses.count(200) == 3


async def test_malformed_answers_end_as_an_analysis_error_and_the_task_completes(
    start_worker, temporal_client: Client, judge_server: JudgeServer, judge: dict[str, str]
) -> None:
    judge_server.malformed_next(1000)
    start_worker(**judge)
    task_id = await submit(temporal_client, "hello-pass", local("oracle"), run_analysis=True)
    task = await wait_for_task(temporal_client, task_id)

    assert task["status"] == "completed"
    [analysis] = analyses(task).values()
    assert analysis["status"] == "failed"
    assert analysis["classification"] == "success"  # the rule-based classification stands
    assert "did not fit the schema 3 times" in analysis["judge"]["error"]
    assert (
        analysis["judge"]["raw_answers"]
        == ["Sure! Here is my analysis: {classification: maybe"] * 3
    )
    assert "classification" not in analysis["judge"]
    verdict = task["verdict"]
    assert (
        verdict["status"] == "failed"
        and verdict["summary"] == "1/1 trials passed (mean reward 1.000)"
    )
    assert task["judge_usage"]["errors"] == 2


async def test_a_classification_against_the_reward_is_corrected(
    start_worker, temporal_client: Client, judge_server: JudgeServer, judge: dict[str, str]
) -> None:
    judge_server.force_classification = "GOOD_SUCCESS"
    start_worker(**judge)
    task_id = await submit(temporal_client, "hello-pass", local("nop"), run_analysis=True)
    task = await wait_for_task(temporal_client, task_id)

    [analysis] = analyses(task).values()
    assert analysis["judge"]["classification"] == "GOOD_FAILURE"
    assert analysis["judge"]["corrected_from"] == "GOOD_SUCCESS"


async def test_a_50_mb_log_stays_within_the_prompt_budget(
    start_worker, temporal_client: Client, judge_server: JudgeServer
) -> None:
    budget_tokens = 8_000
    with judge_settings(judge_server, ODDISH_ANALYSIS_MAX_PROMPT_TOKENS=str(budget_tokens)) as env:
        start_worker(PYTHONPATH=str(TESTS_DIR), **env)
        task_id = await submit(
            temporal_client,
            "hello-pass",
            local("trajectory_agent:HugeLogAgent"),
            run_analysis=True,
        )
        task = await wait_for_task(temporal_client, task_id)

    assert task["status"] == "completed"
    [request] = [r for r in judge_server.requests if r.schema_name == "trial_analysis"]
    user = request.messages[-1]["content"]
    print(f"analysis prompt: {len(user)} characters for a 50 MB log")
    assert len(user) <= budget_tokens * 4 + 2_000  # the budget, and the facts around it
    assert HEAD_MARKER in user and TAIL_MARKER in user and MIDDLE_MARKER not in user
    assert "bytes cut ...]" in user


async def test_run_analysis_without_a_judge_model_is_refused(
    api: str, temporal_client: Client, tmp_path: Path
) -> None:
    before = httpx.get(f"{api}/tasks", params={"limit": 1}).json()["total"]
    with pytest.raises(JudgeNotConfigured, match="ODDISH_ANALYSIS_MODEL"):
        await submit(temporal_client, "hello-pass", local(), run_analysis=True)

    refused = oddish_cli(
        api,
        "run",
        str(EXAMPLES / "hello-pass"),
        "-a",
        "oracle",
        "--env",
        "local",
        "--run-analysis",
        "--json",
    )
    assert refused.returncode == 1
    assert "ODDISH_ANALYSIS_MODEL" in refused.stderr and "422" in refused.stderr
    assert httpx.get(f"{api}/tasks", params={"limit": 1}).json()["total"] == before


async def test_judge_again_with_another_model_runs_no_trial(
    api: str,
    start_worker,
    temporal_client: Client,
    judge_server: JudgeServer,
    judge: dict[str, str],
) -> None:
    start_worker(**judge)
    experiment = f"judge-again-{secrets.token_hex(3)}"
    task_id = await submit(
        temporal_client,
        "hello-pass",
        local("oracle"),
        local("nop"),
        run_analysis=True,
        experiment_id=experiment,
    )
    task = await wait_for_task(temporal_client, task_id)
    attempts_before = {t["id"]: len(t["attempts"]) for t in task["trials"]}
    oracle = next(t for t in task["trials"] if t["agent"] == "oracle")
    other = f"openai/other-judge-{secrets.token_hex(2)}"

    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        # One trial's analysis, with another model.
        started = await http.post(f"/trials/{oracle['id']}/analysis/retry", json={"model": other})
        assert started.status_code == 202, started.text
        assert started.json()["trial_ids"] == [oracle["id"]] and not started.json()["verdict"]

        async def judged_by_other() -> bool:
            found = (await http.get(f"/trials/{oracle['id']}")).json()["analysis"]["judge"]
            return found["model"] == other

        await poll(judged_by_other, timeout=120, what="the trial judged again")
        again = (await http.get(f"/trials/{oracle['id']}")).json()["analysis"]["judge"]
        assert served_name(other) in again["evidence"]

        # The verdict alone, then the whole task: the CLI waits for it.
        verdict = await http.post(f"/tasks/{task_id}/verdict/retry")
        assert verdict.status_code == 202 and verdict.json()["trial_ids"] == []
        await poll(
            lambda: _verdict_after(http, task_id, verdict.json()["started_at"]),
            timeout=120,
            what="the verdict decided again",
        )
        # While the judge is at it, another round is refused with the reason.
        judge_server.delay_sec = 1.0
        first = await http.post(f"/tasks/{task_id}/analysis/retry")
        assert first.status_code == 202
        second = await http.post(f"/tasks/{task_id}/analysis/retry")
        assert second.status_code == 409 and "already" in second.json()["detail"]
        judge_server.delay_sec = 0.0

    third = f"openai/third-judge-{secrets.token_hex(2)}"
    # The round above ends (its judge answers a second late) before another is asked for.
    last_round = temporal_client.get_workflow_handle(judge_again_workflow_id(task_id))
    await asyncio.wait_for(last_round.result(), timeout=120)
    waited = oddish_cli(api, "analyze", task_id, "--model", third, "--wait")
    assert waited.returncode == 0, waited.stderr
    judged = json.loads(oddish_cli(api, "status", task_id, "--json").stdout)
    assert {t["analysis"]["judge"]["model"] for t in judged["trials"]} == {third}
    assert judged["verdict"]["judge"]["model"] == third
    assert {t["id"]: len(t["attempts"]) for t in judged["trials"]} == attempts_before

    by_experiment = oddish_cli(api, "analyze", "--experiment", experiment, "--json")
    assert by_experiment.returncode == 0, by_experiment.stderr
    [one] = json.loads(by_experiment.stdout)["tasks"]
    assert one["task_id"] == task_id and one["analysis_model"] == judge["ODDISH_ANALYSIS_MODEL"]


async def _verdict_after(http: httpx.AsyncClient, task_id: str, since: str) -> bool:
    verdict = (await http.get(f"/tasks/{task_id}")).json()["verdict"]
    return bool(verdict and verdict["finished_at"] >= since)
