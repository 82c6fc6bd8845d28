"""Whether a directory holds a task Harbor can load: checked when it is submitted, so a broken
task is refused with Harbor's reason instead of failing every one of its trials later."""

from __future__ import annotations

import tomllib
from pathlib import Path

from harbor.models.task.task import Task
from pydantic import BaseModel, ValidationError

from oddish.env_references import env_tables_problems, task_env_tables


class TaskCheck(BaseModel):
    """What a submission needs to know of a task's files, found once (``check_task_dir``): an
    upload keeps it beside its files, so each sweep of it skips loading the task again."""

    # Harbor's reason it cannot load the task with its tests checked, and without.
    problem: str | None
    problem_without_verification: str | None
    # The env tables of its task.toml, as (where, table): which names a table may refer to
    # is a setting, so they are checked against it at each submission.
    env_tables: list[tuple[str, dict[str, str]]]

    def problem_for(self, *, disable_verification: bool) -> str | None:
        return self.problem_without_verification if disable_verification else self.problem

    def env_problems(self) -> list[str]:
        """Why each ``${NAME}`` of the task's env tables not allowed now is refused."""
        return env_tables_problems(self.env_tables)


def _load(task_dir: Path, *, disable_verification: bool) -> tuple[Task | None, str | None]:
    try:
        return Task(task_dir, disable_verification=disable_verification), None
    except ValidationError as exc:  # only task.toml is validated against a schema
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'task.toml'}: {err['msg']}"
            for err in exc.errors()
        )
        return None, f"task.toml does not match Harbor's task schema: {fields}"
    except tomllib.TOMLDecodeError as exc:
        return None, f"task.toml is not valid TOML: {exc}"
    except (OSError, ValueError) as exc:
        return None, f"Harbor cannot load the task: {exc}"


def task_dir_problem(task_dir: Path, *, disable_verification: bool) -> str | None:
    """What keeps Harbor from loading the task (its task.toml, instruction, tests), or None."""
    return _load(task_dir, disable_verification=disable_verification)[1]


def check_task_dir(task_dir: Path) -> TaskCheck:
    """The task's :class:`TaskCheck`, loading it once when it loads with its tests checked (the
    check without them only skips theirs). A task that loads neither way is refused before its
    env tables matter: it has none here."""
    task, problem = _load(task_dir, disable_verification=False)
    unverified = None
    if task is None:
        task, unverified = _load(task_dir, disable_verification=True)
    return TaskCheck(
        problem=problem,
        problem_without_verification=unverified,
        env_tables=task_env_tables(task.config) if task is not None else [],
    )
