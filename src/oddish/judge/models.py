"""Which models judge: the settings' ``ODDISH_ANALYSIS_MODEL`` and ``ODDISH_VERDICT_MODEL``
(which defaults to the analysis model), fixed on a task when it asks for the judge."""

from __future__ import annotations

from dataclasses import dataclass

from oddish.config import Settings

NOT_CONFIGURED = (
    "run_analysis asks for the judge, but no judge model is configured: set "
    "ODDISH_ANALYSIS_MODEL (a LiteLLM model name such as openai/gpt-5-mini or "
    "anthropic/claude-sonnet-4-5) on the API and the workers, with the provider's key"
)


class JudgeNotConfigured(ValueError):
    """The judge was asked for and no model is set: the message says which setting to set."""

    def __init__(self) -> None:
        super().__init__(NOT_CONFIGURED)


@dataclass(frozen=True)
class JudgeModels:
    analysis: str
    verdict: str


def judge_models(settings: Settings, model: str | None = None) -> JudgeModels:
    """The models of the judge: ``model`` for both when given (judging again with another),
    else the settings'. JudgeNotConfigured when there is none."""
    if model and model.strip():
        return JudgeModels(model.strip(), model.strip())
    analysis = (settings.analysis_model or "").strip()
    if not analysis:
        raise JudgeNotConfigured()
    return JudgeModels(analysis, (settings.verdict_model or "").strip() or analysis)
