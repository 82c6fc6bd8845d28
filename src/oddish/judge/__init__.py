"""The judge: an LLM's analysis of each finished trial and its verdict on each task.

A task asks for it at submission (``run_analysis``); the models are the settings'
``ODDISH_ANALYSIS_MODEL`` / ``ODDISH_VERDICT_MODEL`` (LiteLLM names), fixed on the task then.
The rule-based classification (the trial's ``outcome``) and the counts are made either way and
stay beside the judge's answer.

- :mod:`~oddish.judge.answers`: what the judge answers (pydantic models, their JSON schemas for
  structured output), and the correction of a classification that contradicts the reward;
- :mod:`~oddish.judge.evidence`: what it is shown, read from storage within a token budget;
- :mod:`~oddish.judge.prompts`: the prompts;
- :mod:`~oddish.judge.llm`: one call through LiteLLM, retried while the provider is busy;
- :mod:`~oddish.judge.slot`: the call holds a slot of the model's queue key, like a trial.
"""
