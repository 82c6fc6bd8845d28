"""The test judge (tests/llm_server.py) answers LiteLLM as OpenAI would: the facts the judge
client relies on, checked against the LiteLLM installed."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from llm_server import JudgeServer, judge_server_fixture  # noqa: F401

litellm.suppress_debug_info = True


async def ask(server: JudgeServer, schema_name: str, prompt: str, **options: Any) -> Any:
    return await litellm.acompletion(
        model="openai/judge-x",
        api_base=server.url,
        api_key="sk-test",
        messages=[{"role": "system", "content": "You judge."}, {"role": "user", "content": prompt}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": {"type": "object"}, "strict": True},
        },
        **{"num_retries": 0, "max_retries": 0, **options},
    )


@pytest.mark.parametrize(
    ("schema_name", "prompt", "expected"),
    [
        ("trial_analysis", "Verified reward: 1.0", {"classification": "GOOD_SUCCESS"}),
        ("trial_analysis", "Verified reward: 0.5", {"classification": "GOOD_FAILURE"}),
        (
            "trial_analysis",
            "Verified reward: none\n# BRITTLE: exact float",
            {"classification": "BAD_FAILURE", "subtype": "Rigid/Brittle Tests"},
        ),
        ("task_verdict", "trial 1: BAD_FAILURE", {"is_good": False}),
        ("task_verdict", "trial 1: GOOD_SUCCESS", {"is_good": True, "primary_issue": None}),
        ("something_else", "hello", {"answer": "ok"}),
    ],
)
async def test_each_schema_gets_its_answer(
    judge_server: JudgeServer, schema_name: str, prompt: str, expected: dict[str, Any]
) -> None:
    response = await ask(judge_server, schema_name, prompt)
    content = response.choices[0].message.content
    answer = json.loads(content)
    assert answer.items() >= expected.items()
    if schema_name != "something_else":
        assert "judged by judge-x" in content, "the provider prefix is not sent"
    assert response.usage.completion_tokens == len(content) // 4
    assert response.usage.total_tokens > response.usage.completion_tokens
    [request] = judge_server.requests
    assert (request.model, request.schema_name, request.status) == ("judge-x", schema_name, 200)
    assert request.prompt == f"You judge.\n{prompt}"
    assert request.headers["Authorization"] == "Bearer sk-test"


async def test_forced_classification_wins_over_the_reward(judge_server: JudgeServer) -> None:
    judge_server.force_classification = "BAD_SUCCESS"
    response = await ask(judge_server, "trial_analysis", "Verified reward: 0")
    assert json.loads(response.choices[0].message.content)["classification"] == "BAD_SUCCESS"


async def test_a_429_is_a_rate_limit_error_with_its_retry_after(judge_server: JudgeServer) -> None:
    judge_server.rate_limit_next(1, retry_after=7)
    with pytest.raises(litellm.RateLimitError) as raised:
        await ask(judge_server, "trial_analysis", "Verified reward: 1")
    # LiteLLM's own exc.response has no headers: the provider's are here.
    assert raised.value.litellm_response_headers["retry-after"] == "7"
    assert len(judge_server.requests) == 1, "neither LiteLLM nor the OpenAI SDK asked again"
    await ask(judge_server, "trial_analysis", "Verified reward: 1")  # the next one is answered
    assert [r.status for r in judge_server.requests] == [429, 200]


@pytest.mark.parametrize("no_retries", [{"num_retries": 0}, {"max_retries": 0}])
async def test_a_500_is_an_internal_server_error_asked_once(
    judge_server: JudgeServer, no_retries: dict[str, int]
) -> None:
    judge_server.server_error_next(5)
    with pytest.raises(litellm.InternalServerError):
        await ask(
            judge_server, "x", "p", **{"num_retries": None, "max_retries": None, **no_retries}
        )
    assert len(judge_server.requests) == 1


async def test_a_malformed_answer_reaches_the_caller_as_is(judge_server: JudgeServer) -> None:
    judge_server.malformed_next(1)
    response = await ask(judge_server, "trial_analysis", "Verified reward: 1")
    content = response.choices[0].message.content
    assert content == judge_server.requests[0].content
    with pytest.raises(ValueError):
        json.loads(content)


async def test_a_slow_answer_times_out(judge_server: JudgeServer) -> None:
    judge_server.delay_sec = 0.5
    with pytest.raises(litellm.Timeout):
        await ask(judge_server, "x", "p", timeout=0.1)
    assert len(judge_server.requests) == 1


async def test_slow_answers_overlap(judge_server: JudgeServer) -> None:
    judge_server.delay_sec = 0.3
    await asyncio.gather(*(ask(judge_server, "x", "p") for _ in range(4)))
    assert judge_server.max_in_flight == 4


async def test_the_cost_of_an_unknown_model_is_not_known(judge_server: JudgeServer) -> None:
    response = await ask(judge_server, "x", "p")
    assert response._hidden_params.get("response_cost") is None
    with pytest.raises(litellm.exceptions.ModelNotMappedError):
        litellm.completion_cost(completion_response=response, model="openai/judge-x")
