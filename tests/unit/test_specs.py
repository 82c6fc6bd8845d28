"""Bad input gets a clear error before anything is written; good input maps onto Harbor
faithfully."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from helpers import EXAMPLES
from oddish.config import parse_concurrency_json
from oddish.harbor_config import trial_config
from oddish.queue_keys import queue_key_for_trial
from oddish.schemas import AgentRunConfig, TaskSubmission, TrialSpec


@pytest.mark.parametrize(
    ("agent", "model", "key"),
    [
        ("oracle", None, "default"),
        ("nop", "", "default"),
        ("claude-code", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("claude-code", "Anthropic/Claude-Sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("codex", "gpt-5", "openai/gpt-5"),
        ("aider", None, "agent/aider"),
    ],
)
def test_queue_keys(agent: str, model: str | None, key: str) -> None:
    assert queue_key_for_trial(agent, model) == key


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"agent": "no-such-agent"}, "unknown agent"),
        ({"environment": "no-such-env"}, "unknown environment"),
        ({"n_trials": 0}, "greater than or equal to 1"),
        ({"n_trials": 50_000}, "less than or equal to 10000"),
        ({"agent_timeout_sec": -1}, "greater than 0"),
    ],
)
def test_bad_trial_specs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AgentRunConfig(**fields)


def test_not_a_task_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"no task\.toml"):
        TaskSubmission(task_path=tmp_path, configs=[AgentRunConfig()])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"a": 0}', "positive integer"),
        ('{"a": "2"}', "positive integer"),
        ('{"a": true}', "positive integer"),
    ],
)
def test_bad_concurrency_json_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_concurrency_json(raw)


def test_trial_spec_maps_onto_harbor_config(tmp_path: Path) -> None:
    spec = TrialSpec(
        agent="claude-code",
        model="anthropic/claude-sonnet-4-5",
        environment="daytona",
        agent_env={"K": "V"},
        agent_kwargs={"max_turns": 3},
        agent_timeout_sec=100,
        verifier_timeout_sec=50,
        override_cpus=2,
        override_memory_mb=2048,
        override_gpus=1,
        artifacts=["/app/out"],
        force_build=True,
        disable_verification=True,
    )
    config = trial_config(
        spec, task_path=EXAMPLES / "hello-pass", trials_dir=tmp_path, trial_name="t"
    )
    assert config.agent.name == "claude-code" and config.agent.model_name == spec.model
    assert config.agent.env == {"K": "V"} and config.agent.kwargs == {"max_turns": 3}
    assert config.agent.override_timeout_sec == 100
    assert config.verifier.override_timeout_sec == 50 and config.verifier.disable
    assert config.environment.type == "daytona" and config.environment.force_build
    assert (
        config.environment.override_cpus,
        config.environment.override_memory_mb,
        config.environment.override_gpus,
    ) == (2, 2048, 1)
    assert config.artifacts == ["/app/out"]

    local = trial_config(
        TrialSpec(environment="local"),
        task_path=EXAMPLES / "hello-pass",
        trials_dir=tmp_path,
        trial_name="t",
    )
    assert local.environment.import_path == "oddish.environments.local:LocalEnvironment"
    custom = trial_config(
        TrialSpec(environment="my_pkg.envs:Sandbox", agent="my_pkg.agents:Agent"),
        task_path=EXAMPLES / "hello-pass",
        trials_dir=tmp_path,
        trial_name="t",
    )
    assert custom.environment.import_path == "my_pkg.envs:Sandbox"
    assert custom.agent.import_path == "my_pkg.agents:Agent"
