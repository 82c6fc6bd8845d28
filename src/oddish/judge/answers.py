"""What the judge answers: a trial's analysis and a task's verdict, as pydantic models whose JSON
schemas go to the provider as structured output (``response_format``).

The verified reward stays authoritative: a classification that says success of a trial that did
not pass (or failure of one that did) is corrected, and the correction recorded
(:func:`corrected`). Passing is Harbor's convention: a reward of 1.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ANALYSIS_SCHEMA_NAME = "trial_analysis"
VERDICT_SCHEMA_NAME = "task_verdict"
PASSING_REWARD = 1.0


class Classification(StrEnum):
    """The original Oddish's classes: whose fault a result is."""

    # The trial could not run properly: sandbox, network, harness.
    HARNESS_ERROR = "HARNESS_ERROR"
    # The agent failed, and the task judged it fairly.
    GOOD_FAILURE = "GOOD_FAILURE"
    # The agent failed because of the task: brittle tests, an underspecified instruction, ...
    BAD_FAILURE = "BAD_FAILURE"
    # The agent solved the task, legitimately.
    GOOD_SUCCESS = "GOOD_SUCCESS"
    # The agent passed without solving it: hardcoding, reading the tests, tests too weak.
    BAD_SUCCESS = "BAD_SUCCESS"


SUCCESSES = (Classification.GOOD_SUCCESS, Classification.BAD_SUCCESS)
# The same judgement of the task's quality, on the side of the reward.
_ON_THE_OTHER_SIDE = {
    Classification.GOOD_SUCCESS: Classification.GOOD_FAILURE,
    Classification.BAD_SUCCESS: Classification.BAD_FAILURE,
    Classification.GOOD_FAILURE: Classification.GOOD_SUCCESS,
    Classification.BAD_FAILURE: Classification.BAD_SUCCESS,
    # A harness that failed cannot have produced a passing reward.
    Classification.HARNESS_ERROR: Classification.GOOD_SUCCESS,
}

# The original's subtypes; the judge may name another when none fits.
SUBTYPES = (
    "Timeout",
    "Wrong Approach",
    "Incomplete Solution",
    "Misread Instruction",
    "Tool Misuse",
    "Gave Up",
    "Rigid/Brittle Tests",
    "Underspecified Instruction",
    "Wrong Expected Output",
    "Environment Problem",
    "Hardcoding",
    "Test Inspection",
    "Weak Tests",
    "Infrastructure Failure",
    "Correct Solution",
)


class _Strict(BaseModel):
    # Structured output in strict mode wants every property required and no others.
    model_config = ConfigDict(extra="forbid")


class TrialJudgement(_Strict):
    classification: Classification
    subtype: str = Field(
        max_length=200, description=f"one of {', '.join(SUBTYPES)}, or another if none fits"
    )
    evidence: str = Field(max_length=20_000, description="what in the logs shows it")
    root_cause: str = Field(max_length=20_000)
    recommendation: str = Field(max_length=20_000, description="for the task's author")


class Confidence(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class TaskJudgement(_Strict):
    is_good: bool = Field(description="whether the task is fit to evaluate agents as it is")
    confidence: Confidence
    primary_issue: str | None = Field(max_length=2_000)
    recommendations: list[str] = Field(max_length=50)
    reasoning: str = Field(max_length=50_000)


def _strict_schema(node: Any) -> Any:
    """Strict mode: every object closed and all its properties required; no length bounds
    (providers reject keywords they do not know; the model still checks them)."""
    if isinstance(node, dict):
        node = {
            k: _strict_schema(v)
            for k, v in node.items()
            if k not in ("maxLength", "maxItems", "default", "title")
        }
        if node.get("type") == "object" and "properties" in node:
            node["required"] = sorted(node["properties"])
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict_schema(v) for v in node]
    return node


def response_format(answer: type[BaseModel], name: str) -> dict[str, Any]:
    """The ``response_format`` asking for ``answer`` as JSON (OpenAI's json_schema form, which
    LiteLLM translates for other providers)."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": _strict_schema(answer.model_json_schema()),
        },
    }


def passed(reward: float | None) -> bool:
    return reward is not None and reward >= PASSING_REWARD


def corrected(judgement: TrialJudgement, reward: float | None) -> tuple[TrialJudgement, str | None]:
    """The judgement with its classification on the side of the reward, and the classification
    it replaced (None when it stood)."""
    said = judgement.classification
    if said == Classification.HARNESS_ERROR and not passed(reward):
        return judgement, None
    if (said in SUCCESSES) == passed(reward):
        return judgement, None
    return judgement.model_copy(update={"classification": _ON_THE_OTHER_SIDE[said]}), said.value
