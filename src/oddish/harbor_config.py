"""Maps an oddish trial spec onto Harbor's TrialConfig."""

from __future__ import annotations

from pathlib import Path

from harbor.models.agent.name import AgentName
from harbor.models.environment_type import EnvironmentType
from harbor.models.trial.config import (
    AgentConfig,
    EnvironmentConfig,
    TaskConfig,
    TrialConfig,
    VerifierConfig,
)

from oddish.env_references import env_reference_problems, task_env_problems
from oddish.environments import LOCAL_ENVIRONMENT_IMPORT_PATH
from oddish.schemas import LOCAL_ENVIRONMENT, TrialSpec


def environment_config(spec: TrialSpec) -> EnvironmentConfig:
    common = dict(
        force_build=spec.force_build,
        delete=True,
        override_cpus=spec.override_cpus,
        override_memory_mb=spec.override_memory_mb,
        override_storage_mb=spec.override_storage_mb,
        override_gpus=spec.override_gpus,
        kwargs=spec.environment_kwargs,
    )
    if spec.environment == LOCAL_ENVIRONMENT:
        return EnvironmentConfig(import_path=LOCAL_ENVIRONMENT_IMPORT_PATH, **common)
    if ":" in spec.environment:
        return EnvironmentConfig(import_path=spec.environment, **common)
    return EnvironmentConfig(type=EnvironmentType(spec.environment), **common)


def agent_config(spec: TrialSpec) -> AgentConfig:
    identity = (
        {"name": AgentName(spec.agent).value}
        if spec.agent in AgentName.values()
        else {"import_path": spec.agent}
    )
    return AgentConfig(
        **identity,
        model_name=spec.model,
        env=spec.agent_env,
        kwargs=spec.agent_kwargs,
        override_timeout_sec=spec.agent_timeout_sec,
        override_setup_timeout_sec=spec.agent_setup_timeout_sec,
    )


def refuse_unlisted_env_references(spec: TrialSpec, task_path: Path) -> None:
    """Harbor fills every ``${NAME}`` of the agent's env and of the task's env tables from this
    process's environment, the worker's secrets included. Submission refuses names not allowed;
    checked again here, the last step before Harbor, for a spec stored before that check, built
    without validation, or submitted to an API allowing more names than this worker does."""
    problems = [
        *env_reference_problems(spec.agent_env, where="agent env"),
        *task_env_problems(task_path),
    ]
    if problems:
        # A plain ValueError: the trial fails as misconfigured and is not tried again.
        raise ValueError("; ".join(problems))


def trial_config(
    spec: TrialSpec, *, task_path: Path, trials_dir: Path, trial_name: str
) -> TrialConfig:
    refuse_unlisted_env_references(spec, task_path)
    return TrialConfig(
        task=TaskConfig(path=task_path),
        trial_name=trial_name,
        trials_dir=trials_dir,
        timeout_multiplier=spec.timeout_multiplier,
        agent=agent_config(spec),
        environment=environment_config(spec),
        verifier=VerifierConfig(
            override_timeout_sec=spec.verifier_timeout_sec, disable=spec.disable_verification
        ),
        artifacts=list(spec.artifacts),
    )
