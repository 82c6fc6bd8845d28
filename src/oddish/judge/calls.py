"""The judge's two questions, end to end: gather the evidence, hold a slot of the model's key,
ask, correct. What comes back is what an analysis or a verdict row records of the judge."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from oddish.config import Settings
from oddish.db.records import JudgeFields
from oddish.judge import answers, evidence, prompts
from oddish.judge.llm import JudgeAnswer, ask
from oddish.judge.slot import judge_slot
from oddish.stored_files import task_files, trial_output


@dataclass
class Judged:
    """What a row records of the judge: its answer (or why there is none) and what it cost."""

    model: str
    judgement: dict[str, Any]
    error_message: str | None
    n_input_tokens: int
    n_output_tokens: int
    cost_usd: float | None

    def fields(self) -> JudgeFields:
        """What the analysis or verdict row records of it."""
        return JudgeFields(
            judgement=self.judgement,
            model=self.model,
            n_input_tokens=self.n_input_tokens,
            n_output_tokens=self.n_output_tokens,
            cost_usd=self.cost_usd,
            error_message=self.error_message,
        )

    @classmethod
    def of(cls, asked: JudgeAnswer[Any], judgement: dict[str, Any]) -> Judged:
        if asked.raw_answers:
            judgement = {**judgement, "raw_answers": asked.raw_answers}
        if asked.transient_failures:
            judgement = {**judgement, "provider_retries": asked.transient_failures}
        return cls(
            model=asked.model,
            judgement=judgement,
            error_message=asked.error,
            n_input_tokens=asked.n_input_tokens,
            n_output_tokens=asked.n_output_tokens,
            cost_usd=asked.cost_usd,
        )


@dataclass(frozen=True)
class SlotOwner:
    """Whom the judge's slot row belongs to: the call's name, its workflow, its priority."""

    subject: str
    workflow_id: str
    priority: int = 0


def _budget_chars(settings: Settings) -> int:
    return settings.analysis_max_prompt_tokens * evidence.CHARS_PER_TOKEN


def _trial_messages(
    settings: Settings, facts: dict[str, Any], task_location: str, output_location: str | None
) -> list[dict[str, str]]:
    """Blocking: reads the task and the trial's output from storage."""
    budget = _budget_chars(settings)
    task_part = evidence.task_part(task_files(task_location), int(budget * evidence.TASK_SHARE))
    output = trial_output(output_location) if output_location else None
    trial_budget = int(budget * (1 - evidence.TASK_SHARE))
    return prompts.analysis_messages(facts, task_part, evidence.trial_parts(output, trial_budget))


async def judge_trial(
    settings: Settings,
    model: str,
    facts: dict[str, Any],
    *,
    task_location: str,
    output_location: str | None,
    owner: SlotOwner,
) -> Judged:
    """The judge's analysis of one trial. ``facts`` are the recorded result fields (see
    :func:`prompts.analysis_messages`); the classification is corrected to the reward."""
    messages = await asyncio.to_thread(
        _trial_messages, settings, facts, task_location, output_location
    )
    async with judge_slot(
        owner.subject, model=model, workflow_id=owner.workflow_id, priority=owner.priority
    ):
        asked = await ask(
            settings,
            model,
            messages,
            answers.TrialJudgement,
            answers.response_format(answers.TrialJudgement, answers.ANALYSIS_SCHEMA_NAME),
        )
    if asked.answer is None:
        return Judged.of(asked, {})
    judgement, replaced = answers.corrected(asked.answer, facts.get("reward"))
    recorded = judgement.model_dump(mode="json")
    if replaced is not None:
        recorded["corrected_from"] = replaced
    return Judged.of(asked, recorded)


def _verdict_messages(
    settings: Settings,
    task: dict[str, Any],
    counts: dict[str, Any],
    analyses: list[dict[str, Any]],
    task_location: str,
) -> list[dict[str, str]]:
    budget = _budget_chars(settings)
    task_part = evidence.task_part(task_files(task_location), int(budget * evidence.TASK_SHARE))
    return prompts.verdict_messages(task, counts, analyses, task_part, budget)


async def judge_task(
    settings: Settings,
    model: str,
    task: dict[str, Any],
    counts: dict[str, Any],
    analyses: list[dict[str, Any]],
    *,
    task_location: str,
    owner: SlotOwner,
) -> Judged:
    """The judge's verdict on a task from its counts and its trials' analyses."""
    messages = await asyncio.to_thread(
        _verdict_messages, settings, task, counts, analyses, task_location
    )
    async with judge_slot(
        owner.subject, model=model, workflow_id=owner.workflow_id, priority=owner.priority
    ):
        asked = await ask(
            settings,
            model,
            messages,
            answers.TaskJudgement,
            answers.response_format(answers.TaskJudgement, answers.VERDICT_SCHEMA_NAME),
        )
    recorded = {} if asked.answer is None else asked.answer.model_dump(mode="json")
    return Judged.of(asked, recorded)
