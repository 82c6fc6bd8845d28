"""Whether a directory holds a task Harbor can load: checked when it is submitted, so a broken
task is refused with Harbor's reason instead of failing every one of its trials later."""

from __future__ import annotations

import tomllib
from pathlib import Path

from harbor.models.task.task import Task
from pydantic import ValidationError


def task_dir_problem(task_dir: Path, *, disable_verification: bool) -> str | None:
    """What keeps Harbor from loading the task (its task.toml, instruction, tests), or None."""
    try:
        Task(task_dir, disable_verification=disable_verification)
    except ValidationError as exc:  # only task.toml is validated against a schema
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'task.toml'}: {err['msg']}"
            for err in exc.errors()
        )
        return f"task.toml does not match Harbor's task schema: {fields}"
    except tomllib.TOMLDecodeError as exc:
        return f"task.toml is not valid TOML: {exc}"
    except (OSError, ValueError) as exc:
        return f"Harbor cannot load the task: {exc}"
    return None
