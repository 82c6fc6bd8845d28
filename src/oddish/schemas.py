"""Pydantic models of what users submit and what the library returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harbor.models.agent.name import AgentName
from harbor.models.environment_type import EnvironmentType
from pydantic import BaseModel, Field, field_validator, model_validator

from oddish.env_references import env_reference_problems, task_env_problems
from oddish.queue_keys import queue_key_for_trial
from oddish.task_check import TaskCheck, task_dir_problem

LOCAL_ENVIRONMENT = "local"
# A task of many trials runs them in batches (child workflows): its history stays bounded.
MAX_TRIALS_PER_TASK = 10_000
# Priorities are Postgres integers; higher runs first.
MAX_PRIORITY = 1_000_000_000


def is_import_path(name: str) -> bool:
    module, sep, attr = name.partition(":")
    return bool(sep) and bool(module) and bool(attr) and " " not in name


def validate_agent_name(agent: str) -> str:
    if agent in AgentName.values() or is_import_path(agent):
        return agent
    raise ValueError(
        f"unknown agent {agent!r}: use one of Harbor's agents "
        f"({', '.join(sorted(AgentName.values()))}) or an import path module:Class"
    )


def validate_environment_name(environment: str) -> str:
    known = {e.value for e in EnvironmentType} | {LOCAL_ENVIRONMENT}
    if environment in known or is_import_path(environment):
        return environment
    raise ValueError(
        f"unknown environment {environment!r}: use one of {', '.join(sorted(known))} "
        "or an import path module:Class"
    )


class TrialSpec(BaseModel):
    """How one trial runs: everything Harbor needs besides the task itself."""

    agent: str = Field(default="oracle", max_length=255)
    # Room for the provider a queue key puts in front (``anthropic/``).
    model: str | None = Field(default=None, max_length=200)
    environment: str = Field(default="docker", max_length=255)
    agent_env: dict[str, str] = Field(default_factory=dict)
    agent_kwargs: dict[str, Any] = Field(default_factory=dict)
    environment_kwargs: dict[str, Any] = Field(default_factory=dict)
    agent_timeout_sec: float | None = Field(default=None, gt=0)
    agent_setup_timeout_sec: float | None = Field(default=None, gt=0)
    verifier_timeout_sec: float | None = Field(default=None, gt=0)
    timeout_multiplier: float = Field(default=1.0, gt=0)
    override_cpus: int | None = Field(default=None, ge=1)
    override_memory_mb: int | None = Field(default=None, ge=1)
    override_storage_mb: int | None = Field(default=None, ge=1)
    override_gpus: int | None = Field(default=None, ge=0)
    artifacts: list[str] = Field(default_factory=list)
    force_build: bool = False
    disable_verification: bool = False

    @field_validator("agent")
    @classmethod
    def _known_agent(cls, agent: str) -> str:
        return validate_agent_name(agent)

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, environment: str) -> str:
        return validate_environment_name(environment)

    @property
    def queue_key(self) -> str:
        return queue_key_for_trial(self.agent, self.model)


class AgentRunConfig(TrialSpec):
    """A trial spec run ``n_trials`` times (one entry of the original Oddish's ``configs``)."""

    n_trials: int = Field(default=1, ge=1, le=MAX_TRIALS_PER_TASK)

    # Checked on what is submitted, not on TrialSpec: the worker validates stored specs again, and
    # there a refusal must fail the trial (trial_config checks again) rather than the activity.
    @field_validator("agent_env")
    @classmethod
    def _allowed_env_references(cls, env: dict[str, str]) -> dict[str, str]:
        problems = env_reference_problems(env, where="agent env")
        if problems:
            raise ValueError("; ".join(problems))
        return env


class TaskSubmission(BaseModel):
    """A Harbor task and the trials to run on it: its directory (``task_path``), or its files
    packed already (``packed``, with their ``checked`` and a ``name``)."""

    task_path: Path | None = None
    name: str | None = Field(default=None, min_length=1, max_length=255)
    # An experiment's id, or the name of an existing one.
    experiment_id: str | None = Field(default=None, min_length=1, max_length=64)
    experiment_name: str | None = Field(default=None, min_length=1, max_length=255)
    configs: list[AgentRunConfig] = Field(min_length=1)
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    # Ask for the judge (an LLM's analysis of each trial and a verdict): needs a judge model.
    run_analysis: bool = False
    user: str | None = Field(default=None, max_length=255)
    # A client-chosen key: submitting again with the same key returns the first task.
    submission_key: str | None = Field(default=None, min_length=1, max_length=255)
    # A pre-built image for the task's environment, in place of the one its task.toml names.
    docker_image: str | None = Field(default=None, min_length=1, max_length=512)
    # Found when the task was uploaded: the task is not loaded again to check it.
    checked: TaskCheck | None = Field(default=None, exclude=True, repr=False)
    # The task's files already packed by ``task_store.pack_task_dir`` (an upload's): stored as
    # they are unless ``docker_image`` rewrites the task.
    packed: Path | None = Field(default=None, exclude=True, repr=False)

    @field_validator("task_path")
    @classmethod
    def _task_dir(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser().resolve()
        if not (path / "task.toml").is_file():
            raise ValueError(f"{path} is not a Harbor task directory (no task.toml)")
        return path

    @model_validator(mode="after")
    def _task_given(self) -> TaskSubmission:
        if self.task_path is None and (
            self.packed is None or self.checked is None or self.name is None
        ):
            raise ValueError("a task_path, or a packed task with its check and name")
        return self

    @property
    def task_name(self) -> str:
        """The task's name: the one given, else its directory's."""
        if self.name is not None:
            return self.name
        assert self.task_path is not None  # _task_given
        return self.task_path.name

    @model_validator(mode="after")
    def _bounded(self) -> TaskSubmission:
        total = sum(c.n_trials for c in self.configs)
        if total > MAX_TRIALS_PER_TASK:
            raise ValueError(f"{total} trials in one task; at most {MAX_TRIALS_PER_TASK}")
        return self

    @model_validator(mode="after")
    def _loadable(self) -> TaskSubmission:
        disable_verification = all(c.disable_verification for c in self.configs)
        if self.checked is not None:
            problem = self.checked.problem_for(disable_verification=disable_verification)
        else:
            assert self.task_path is not None  # _task_given
            problem = task_dir_problem(self.task_path, disable_verification=disable_verification)
        if problem is not None:
            raise ValueError(f"{self.task_name}: {problem}")
        return self

    @model_validator(mode="after")
    def _allowed_task_env_references(self) -> TaskSubmission:
        if self.checked is not None:
            problems = self.checked.env_problems()
        else:
            assert self.task_path is not None  # _task_given
            problems = task_env_problems(self.task_path)
        if problems:
            raise ValueError(f"{self.task_name}: {'; '.join(problems)}")
        return self

    def config_specs(self) -> list[tuple[TrialSpec, int]]:
        """Each config's trial spec and how many trials run it, in order."""
        return [
            (TrialSpec.model_validate(config.model_dump(exclude={"n_trials"})), config.n_trials)
            for config in self.configs
        ]

    def trial_specs(self) -> list[TrialSpec]:
        return [
            spec.model_copy() for spec, n_trials in self.config_specs() for _ in range(n_trials)
        ]


# The original Oddish's names, as aliases of ours (one model each). Its TaskSweepSubmission and
# HarborConfig are the body of POST /tasks/sweep and its ``harbor`` part; AgentModelPair is one
# entry of ``configs`` as the library takes it. Loaded on first use: oddish.request_bodies
# imports this module.
_ORIGINAL_NAMES = {
    "TaskSweepSubmission": "SweepRequest",
    "HarborConfig": "HarborSettings",
    "HarborAgentConfig": "AgentSettings",
    "HarborVerifierConfig": "VerifierSettings",
}
AgentModelPair = AgentRunConfig


def __getattr__(name: str) -> Any:
    if name in _ORIGINAL_NAMES:
        from oddish import request_bodies

        return getattr(request_bodies, _ORIGINAL_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
