"""Which of the worker's environment variables a trial may name with ``${NAME}``.

Harbor fills a ``${NAME}`` (or ``${NAME:-default}``) env value -- of the agent, and of every env
table of the task's task.toml -- from the environment of the process running the trial: the
worker, whose own secrets are there too. A trial may draw only on the provider keys and
endpoints an agent needs; ODDISH_AGENT_ENV_ALLOWLIST adds names, never oddish's own settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from harbor.models.task.config import TaskConfig
from pydantic import BaseModel

from oddish.config import get_settings, is_own_setting

AGENT_ENV_ALLOWLIST: frozenset[str] = frozenset(
    {
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_API_BASE",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_API_VERSION",
        "AZURE_API_KEY",
        "AZURE_API_BASE",
        "AZURE_API_VERSION",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "OPENROUTER_API_KEY",
        "MISTRAL_API_KEY",
        "GROQ_API_KEY",
        "DEEPSEEK_API_KEY",
        "XAI_API_KEY",
        "TOGETHER_API_KEY",
        "TOGETHERAI_API_KEY",
        "FIREWORKS_API_KEY",
        "CEREBRAS_API_KEY",
        "MOONSHOT_API_KEY",
    }
)
ALLOWLIST_SETTING = "ODDISH_AGENT_ENV_ALLOWLIST"
# Every ``${`` with the name after it, cut where Harbor's own pattern cuts it (at ``}`` or ``:``,
# harbor/utils/env.py). Anywhere in a value, although Harbor 0.24 fills only a whole-value
# reference: a later Harbor filling embedded ones must find nothing more to leak.
_ENV_REFERENCE = re.compile(r"\$\{([^}:]*)")


def allowed_env_names() -> frozenset[str]:
    """The names a trial's env may refer to: never one of oddish's own settings."""
    extra = get_settings().agent_env_allowlist
    return frozenset(n for n in AGENT_ENV_ALLOWLIST.union(extra) if not is_own_setting(n))


def _refusal(where: str, key: str, name: str, allowed: frozenset[str]) -> str:
    reference = f"{where} {key}=${{{name}}}"
    if is_own_setting(name):
        return f"{reference} refers to one of oddish's own settings, which no trial may read"
    return (
        f"{reference} refers to {name!r}, which is not among the worker's environment "
        f"variables a trial may use ({', '.join(sorted(allowed))}); an operator can allow "
        f"more names with {ALLOWLIST_SETTING}"
    )


def env_reference_problems(env: Mapping[str, str], *, where: str) -> list[str]:
    """Why each ``${NAME}`` of ``env`` naming a variable not allowed is refused."""
    allowed = allowed_env_names()
    return [
        _refusal(where, key, name, allowed)
        for key, value in env.items()
        for name in _ENV_REFERENCE.findall(value)
        if name not in allowed
    ]


def _env_tables(value: object, path: str) -> Iterator[tuple[str, Mapping[str, str]]]:
    """Every ``env`` table of a task's config, wherever Harbor nests one (the environment, the
    verifier and its own environment, the solution, each step): Harbor fills them all."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            child = getattr(value, name)
            where = f"{path}.{name}" if path else name
            if name == "env" and isinstance(child, dict):
                yield where, child
            else:
                yield from _env_tables(child, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _env_tables(item, f"{path}[{i}]")


def task_env_tables(config: TaskConfig) -> list[tuple[str, dict[str, str]]]:
    """Every env table of a task's config, as (where in task.toml, table)."""
    return [(where, dict(env)) for where, env in _env_tables(config, "")]


def env_tables_problems(tables: list[tuple[str, dict[str, str]]]) -> list[str]:
    """Why each ``${NAME}`` not allowed in the task's env tables (``task_env_tables``) is
    refused, by the names allowed now."""
    return [
        problem
        for where, env in tables
        for problem in env_reference_problems(env, where=f"task.toml {where}")
    ]


def task_env_problems(task_dir: Path) -> list[str]:
    """Why each ``${NAME}`` not allowed in the env tables of the task's task.toml is refused."""
    try:
        config = TaskConfig.model_validate_toml((task_dir / "task.toml").read_text())
    except (OSError, ValueError):
        # Harbor cannot load such a task either, so fills nothing; it fails on its own account.
        return []
    return env_tables_problems(task_env_tables(config))
