"""Sweep files (``oddish run -c sweep.yaml``), in the original Oddish's format.

agents:
  - name: claude-code
    model_name: claude-sonnet-4-5
    n_trials: 3
    env: {CUSTOM_VAR: value}        # agent environment variables
    kwargs: {max_thinking_tokens: 8000}
    timeout_minutes: 120            # agent timeout
  - name: oracle
path: ./my-dataset                  # a task directory or a directory of them (or: dataset)
task_names: ["django__*"]           # glob patterns to keep
exclude_task_names: ["*-slow"]      # glob patterns to drop
n_tasks: 10
environment: docker
priority: high                      # low, high or a number
experiment_id: my-experiment
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from oddish.schemas import MAX_TRIALS_PER_TASK, validate_agent_name, validate_environment_name

PARAM_HINT = "'-c' / '--config'"
# The original Oddish's two priorities, as numbers (higher runs first).
PRIORITY_NAMES = {"low": 0, "high": 10}


def parse_priority(value: int | str) -> int:
    """A priority number, or ``low`` / ``high``."""
    if isinstance(value, str) and value.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[value.strip().lower()]
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"priority must be low, high or an integer, not {value!r}") from None


class SweepAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model_name: str | None = None
    n_trials: int = Field(default=1, ge=1, le=MAX_TRIALS_PER_TASK)
    env: dict[str, str] = Field(default_factory=dict)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout_minutes: float | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _known_agent(cls, name: str) -> str:
        return validate_agent_name(name)


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[SweepAgent] = Field(min_length=1)
    path: Path | None = None
    dataset: str | None = None
    task_names: list[str] | None = None
    exclude_task_names: list[str] | None = None
    n_tasks: int | None = Field(default=None, ge=1)
    environment: str | None = None
    priority: int | None = None
    experiment_id: str | None = None
    run_analysis: bool | None = None
    disable_verification: bool | None = None
    override_cpus: int | None = Field(default=None, ge=1)
    override_memory_mb: int | None = Field(default=None, ge=1)
    override_gpus: int | None = Field(default=None, ge=0)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: int | str | None) -> int | None:
        return value if value is None else parse_priority(value)

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, environment: str | None) -> str | None:
        return environment if environment is None else validate_environment_name(environment)


def _where(loc: tuple[int | str, ...]) -> str:
    """``("agents", 1, "n_trials")`` -> ``agents[1].n_trials``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _reason(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        model = SweepAgent if error["loc"][0] == "agents" else SweepFile
        return f"unknown field (known: {', '.join(model.model_fields)})"
    return error["msg"].removeprefix("Value error, ")


def load_sweep_file(path: Path) -> SweepFile:
    """The parsed file; a bad one is a usage error naming the file, the field and the reason."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise typer.BadParameter(
            f"{path}: cannot read it ({exc.strerror})", param_hint=PARAM_HINT
        ) from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(exc, "problem", None) or exc
        raise typer.BadParameter(
            f"{path}: not valid YAML{line}: {problem}", param_hint=PARAM_HINT
        ) from exc
    if not isinstance(raw, dict):
        raise typer.BadParameter(
            f"{path}: expected a mapping with an 'agents' list", param_hint=PARAM_HINT
        )
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(f"{_where(e['loc'])}: {_reason(e)}" for e in exc.errors())
        raise typer.BadParameter(f"{path}: {reasons}", param_hint=PARAM_HINT) from None
