"""The bodies clients send: ``POST /tasks/sweep`` (in the original Oddish's shape, mapped onto a
TaskSubmission) and the sweep of ``POST /tasks/run``, limits, an experiment's name, the judge
again, a batch cancel.

HTTP-level models only (no I/O): the API validates with them and the CLI builds its bodies
with them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from oddish.schemas import MAX_TRIALS_PER_TASK, AgentRunConfig, TaskSubmission

if TYPE_CHECKING:
    from oddish.task_check import TaskCheck

# Deeper JSON than any real configuration: beyond it, storing and reading it back only costs.
MAX_JSON_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the value is the client's)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _shallow(value: dict[str, Any]) -> dict[str, Any]:
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


ShallowJson = Annotated[dict[str, Any], AfterValidator(_shallow)]


class Strict(BaseModel):
    # A misspelt field is refused by name, never silently dropped.
    model_config = ConfigDict(extra="forbid")


class AgentSettings(Strict):
    env: dict[str, str] = Field(default_factory=dict, description="agent environment variables")
    kwargs: ShallowJson = Field(default_factory=dict, description="agent keyword arguments")
    timeout_sec: float | None = Field(default=None, gt=0)
    setup_timeout_sec: float | None = Field(default=None, gt=0)


class SweepConfig(Strict):
    agent: str = "oracle"
    model: str | None = None
    n_trials: int = Field(default=1, ge=1, le=MAX_TRIALS_PER_TASK)
    agent_config: AgentSettings = Field(default_factory=AgentSettings)


class VerifierSettings(Strict):
    timeout_sec: float | None = Field(default=None, gt=0)
    disable: bool = False


class HarborSettings(Strict):
    environment: str = "docker"
    environment_kwargs: ShallowJson = Field(default_factory=dict)
    verifier: VerifierSettings = Field(default_factory=VerifierSettings)
    artifacts: list[str] = Field(default_factory=list)
    override_cpus: int | None = Field(default=None, ge=1)
    override_memory_mb: int | None = Field(default=None, ge=1)
    override_gpus: int | None = Field(default=None, ge=0)
    override_storage_mb: int | None = Field(default=None, ge=1)
    timeout_multiplier: float = Field(
        default=1.0, gt=0, description="scales every timeout of the task"
    )
    force_build: bool = False
    docker_image: str | None = Field(
        default=None, min_length=1, description="a pre-built image in place of the task's own"
    )


class SweepSettings(Strict):
    """What a sweep runs and where it is recorded: POST /tasks/sweep without the task's source,
    and the ``sweep`` field of POST /tasks/run."""

    name: str | None = None
    configs: list[SweepConfig] = Field(min_length=1)
    harbor: HarborSettings = Field(default_factory=HarborSettings)
    priority: int = 0
    experiment_id: str | None = None
    experiment_name: str | None = None
    run_analysis: bool = False
    user: str | None = None
    submission_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="resending the same key returns the same task",
    )

    def submission(
        self,
        task_path: Path | None,
        default_name: str,
        *,
        checked: TaskCheck | None = None,
        packed: Path | None = None,
    ) -> TaskSubmission:
        """Raises pydantic.ValidationError for unknown agents or environments, too many trials,
        a task Harbor cannot load. ``checked`` and ``packed``: see TaskSubmission."""
        h = self.harbor
        return TaskSubmission(
            task_path=task_path,
            checked=checked,
            packed=packed,
            name=self.name or default_name,
            experiment_id=self.experiment_id,
            experiment_name=self.experiment_name,
            priority=self.priority,
            run_analysis=self.run_analysis,
            user=self.user,
            submission_key=self.submission_key,
            docker_image=h.docker_image,
            configs=[
                AgentRunConfig(
                    agent=c.agent,
                    model=c.model,
                    n_trials=c.n_trials,
                    environment=h.environment,
                    agent_env=c.agent_config.env,
                    agent_kwargs=c.agent_config.kwargs,
                    agent_timeout_sec=c.agent_config.timeout_sec,
                    agent_setup_timeout_sec=c.agent_config.setup_timeout_sec,
                    environment_kwargs=h.environment_kwargs,
                    verifier_timeout_sec=h.verifier.timeout_sec,
                    disable_verification=h.verifier.disable,
                    artifacts=h.artifacts,
                    override_cpus=h.override_cpus,
                    override_memory_mb=h.override_memory_mb,
                    override_gpus=h.override_gpus,
                    override_storage_mb=h.override_storage_mb,
                    timeout_multiplier=h.timeout_multiplier,
                    force_build=h.force_build,
                )
                for c in self.configs
            ],
        )


class SweepRequest(SweepSettings):
    upload_id: str | None = Field(default=None, description="what POST /tasks/upload answered")
    task_id: str | None = Field(
        default=None,
        max_length=64,
        description="instead of upload_id: run more trials of this task's stored version, as "
        "a new task in its experiment (unless experiment_id says otherwise); the original "
        "Oddish appended them to the task itself",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SweepRequest:
        if (self.upload_id is None) == (self.task_id is None):
            raise ValueError("give upload_id (a new upload) or task_id (an existing task)")
        return self


class LimitUpdate(Strict):
    limit: int = Field(ge=1, le=10_000, description="trials of this queue key that may run at once")


class ExperimentUpdate(Strict):
    name: str = Field(min_length=1, max_length=255)


class JudgeAgainRequest(Strict):
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="a LiteLLM model name; default: the task's judge model, else the server's",
    )


class BatchCancel(Strict):
    task_ids: list[str] = Field(min_length=1, max_length=1000, examples=[["task-3f2a9c1e"]])
