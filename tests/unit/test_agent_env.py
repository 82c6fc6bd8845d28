"""A trial's ``${NAME}`` env values draw on the worker's environment only for allowed provider
keys: never the worker's own settings (its database URL, its API key) nor anything unlisted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harbor.agents.factory import AgentFactory
from harbor.utils.env import get_required_host_vars, resolve_env_vars
from pydantic import ValidationError

from helpers import EXAMPLES
from oddish.api.app import create_app
from oddish.config import Settings, get_settings
from oddish.env_references import AGENT_ENV_ALLOWLIST, env_reference_problems
from oddish.harbor_config import trial_config
from oddish.request_bodies import SweepRequest
from oddish.schemas import AgentRunConfig, TaskSubmission, TrialSpec

DB_URL = "postgresql+asyncpg://oddish:worker-secret@db:5432/oddish"
TASK = EXAMPLES / "hello-pass"

# Values a submitter might use to read what the worker must keep to itself.
REFUSED = {
    "${ODDISH_DATABASE_URL}": "ODDISH_DATABASE_URL",
    "${DATABASE_URL}": "DATABASE_URL",
    "${ODDISH_API_KEY:-none}": "ODDISH_API_KEY",
    "${oddish_api_key}": "oddish_api_key",
    "${HOME}": "HOME",
    "${AWS_SECRET_ACCESS_KEY}": "AWS_SECRET_ACCESS_KEY",
    "${ANTHROPIC_API_KEY:-${ODDISH_API_KEY}}": "ODDISH_API_KEY",
    "postgres at ${DATABASE_URL} please": "DATABASE_URL",
}


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The worker's environment, with secrets a trial must never see; settings read afresh."""
    monkeypatch.setenv("ODDISH_DATABASE_URL", DB_URL)
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("ODDISH_API_KEY", "worker-api-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.delenv("ODDISH_AGENT_ENV_ALLOWLIST", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def sweep(env: dict[str, str]) -> SweepRequest:
    return SweepRequest.model_validate(
        {"upload_id": "u", "configs": [{"agent": "nop", "agent_config": {"env": env}}]}
    )


def build(spec: TrialSpec, tmp_path: Path, task: Path = TASK) -> object:
    return trial_config(spec, task_path=task, trials_dir=tmp_path, trial_name="t")


def test_harbor_fills_env_templates_from_the_workers_environment(
    settings_env: pytest.MonkeyPatch,
) -> None:
    """What makes the check needed: Harbor 0.24 reads any name, defaults included."""
    assert resolve_env_vars({"LEAK": "${ODDISH_DATABASE_URL}"}) == {"LEAK": DB_URL}
    assert resolve_env_vars({"X": "${NO_SUCH_VAR_HERE:-d}"}) == {"X": "d"}


@pytest.mark.parametrize(("value", "name"), REFUSED.items())
def test_a_sweep_naming_a_variable_not_allowed_is_refused(
    settings_env: pytest.MonkeyPatch, value: str, name: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        sweep({"LEAK": value}).submission(TASK, "hello")
    message = str(refused.value)
    assert f"LEAK=${{{name}" in message
    if name.upper().startswith("ODDISH_") or name == "DATABASE_URL":
        assert "oddish's own settings" in message
    else:
        assert "ODDISH_AGENT_ENV_ALLOWLIST" in message and "ANTHROPIC_API_KEY" in message
    assert DB_URL not in message and "worker-api-key" not in message


def test_every_name_harbor_would_fill_is_checked(settings_env: pytest.MonkeyPatch) -> None:
    """The check reads references as Harbor does (and more): nothing Harbor fills slips past."""
    samples = [*REFUSED, "${ X}", "${A-b}", "${PATH:-}", "${:-x}", "${}", "$HOME", "${HOME"]
    for value in samples:
        for name, _ in get_required_host_vars({"K": value}):
            if name not in AGENT_ENV_ALLOWLIST:
                assert env_reference_problems({"K": value}, where="env"), value


def test_the_allow_list_setting_adds_names_but_never_own_settings(
    settings_env: pytest.MonkeyPatch,
) -> None:
    settings_env.setenv("ODDISH_AGENT_ENV_ALLOWLIST", " MY_PROXY_KEY ,MY_PROXY_URL")
    get_settings.cache_clear()
    config = AgentRunConfig(agent_env={"K": "${MY_PROXY_KEY}", "U": "${MY_PROXY_URL}"})
    assert config.agent_env == {"K": "${MY_PROXY_KEY}", "U": "${MY_PROXY_URL}"}
    with pytest.raises(ValidationError, match="HOME"):
        AgentRunConfig(agent_env={"K": "${HOME}"})
    for own in ("ODDISH_DATABASE_URL", "DATABASE_URL", "oddish_api_key"):
        with pytest.raises(ValidationError, match="oddish's own settings"):
            Settings(agent_env_allowlist=f"MY_PROXY_KEY,{own}")  # type: ignore[arg-type]


def test_an_allowed_key_reaches_the_agent_and_literals_are_untouched(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_env.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    settings_env.delenv("OPENAI_API_KEY", raising=False)
    env = {
        "ANTHROPIC_API_KEY": "${ANTHROPIC_API_KEY}",
        "OPENAI_API_KEY": "${OPENAI_API_KEY:-unset}",
        "PLAIN": "a literal $value, kept",
        "PRICE": "$5",
    }
    submission = sweep(env).submission(TASK, "hello")
    (spec,) = submission.trial_specs()
    config = trial_config(spec, task_path=TASK, trials_dir=tmp_path, trial_name="t")
    # Templates go to Harbor as they are: the key is read on the worker when the agent starts and
    # never lands in the recorded config.
    assert config.agent.env == env
    agent = AgentFactory.create_agent_from_config(config.agent, logs_dir=tmp_path)
    assert agent.extra_env == {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "OPENAI_API_KEY": "unset",
        "PLAIN": "a literal $value, kept",
        "PRICE": "$5",
    }
    assert "sk-ant-test" not in json.dumps(config.model_dump(mode="json"))


@pytest.mark.parametrize("value", list(REFUSED))
def test_trial_config_refuses_a_spec_that_bypassed_validation(
    settings_env: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    built = TrialSpec.model_construct(agent="nop", agent_env={"LEAK": value})
    validated = TrialSpec(agent="nop", agent_env={"LEAK": value})  # TrialSpec alone allows it
    for spec in (built, validated):
        with pytest.raises(ValueError, match="agent env LEAK=") as refused:
            build(spec, tmp_path)
        # Exactly ValueError: the worker counts it a configuration error, never retried.
        assert type(refused.value) is ValueError


def test_a_worker_allowing_fewer_names_than_the_api_refuses_the_rest(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_env.setenv("ODDISH_AGENT_ENV_ALLOWLIST", "MY_PROXY_KEY")
    get_settings.cache_clear()
    (spec,) = sweep({"K": "${MY_PROXY_KEY}"}).submission(TASK, "hello").trial_specs()
    settings_env.delenv("ODDISH_AGENT_ENV_ALLOWLIST")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="MY_PROXY_KEY"):
        build(spec, tmp_path)


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ("[environment.env]", "environment.env"),
        ("[verifier.env]", "verifier.env"),
        ("[solution.env]", "solution.env"),
    ],
)
def test_task_toml_env_tables_are_held_to_the_same_list(
    settings_env: pytest.MonkeyPatch, tmp_path: Path, table: str, where: str
) -> None:
    """Harbor fills the env tables of the (submitter's) task.toml from the worker too."""
    task = tmp_path / "task"
    shutil.copytree(TASK, task)
    toml = task / "task.toml"
    toml.write_text(
        toml.read_text().replace("\n[", f'\n{table}\nLEAK = "${{ODDISH_API_KEY}}"\n\n[', 1)
    )
    with pytest.raises(ValidationError, match=rf"task\.toml {where} LEAK="):
        TaskSubmission(task_path=task, configs=[AgentRunConfig(agent="nop")])
    with pytest.raises(ValueError, match=rf"task\.toml {where} LEAK="):
        build(TrialSpec(agent="nop"), tmp_path / "trials", task)

    toml.write_text(toml.read_text().replace("${ODDISH_API_KEY}", "${OPENAI_API_KEY:-x}"))
    TaskSubmission(task_path=task, configs=[AgentRunConfig(agent="nop")])
    build(TrialSpec(agent="nop"), tmp_path / "trials", task)


async def test_the_api_answers_422_naming_the_variable(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real app, its lifespan not run: the sweep is refused before the database is asked."""
    settings_env.setenv("ODDISH_TASKS_DIR", str(tmp_path))
    settings_env.setenv("ODDISH_DATABASE_URL", f"postgresql+asyncpg://nobody@/x?host={tmp_path}")
    settings_env.delenv("DATABASE_URL")
    settings_env.delenv("ODDISH_API_KEY")
    get_settings.cache_clear()
    upload_id = "a" * 64
    shutil.copytree(TASK, tmp_path / "uploads" / upload_id)
    body = {
        "upload_id": upload_id,
        "configs": [{"agent": "nop", "agent_config": {"env": {"LEAK_DB": "${DATABASE_URL}"}}}],
    }
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/tasks/sweep", json=body)
    assert response.status_code == 422, response.text
    assert "LEAK_DB=${DATABASE_URL}" in response.text
