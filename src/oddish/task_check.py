"""Whether a directory holds a task Harbor can load: checked when it is submitted, so a broken
task is refused with Harbor's reason instead of failing every one of its trials later."""

from __future__ import annotations

from pathlib import Path

from harbor.models.task.config import TaskConfig
from harbor.models.task.task import Task
from pydantic import ValidationError


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'task.toml'}: {err['msg']}" for err in exc.errors()
    )


def task_config_problem(task_dir: Path) -> str | None:
    """What is wrong with ``task.toml`` (missing, not TOML, or not Harbor's schema), or None."""
    try:
        TaskConfig.model_validate_toml((task_dir / "task.toml").read_text())
    except FileNotFoundError:
        return "no task.toml: a Harbor task directory needs one at its root"
    except ValidationError as exc:
        return f"task.toml does not match Harbor's task schema: {_validation_text(exc)}"
    except (ValueError, UnicodeDecodeError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        return f"task.toml is not valid TOML: {exc}"
    return None


def task_dir_problem(task_dir: Path, *, disable_verification: bool) -> str | None:
    """What keeps Harbor from loading the task (its config, instruction, tests), or None."""
    problem = task_config_problem(task_dir)
    if problem is not None:
        return problem
    try:
        Task(task_dir, disable_verification=disable_verification)
    except ValidationError as exc:
        return f"Harbor cannot load the task: {_validation_text(exc)}"
    except (OSError, ValueError) as exc:
        return f"Harbor cannot load the task: {exc}"
    return None
