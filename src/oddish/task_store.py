"""Keeps a private copy of each submitted task, so later edits of the user's directory change
nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from harbor.models.task.config import TaskConfig

from oddish.config import get_settings


def store_task_dir(source: Path, task_id: str, *, docker_image: str | None = None) -> Path:
    """Copy the task; with ``docker_image``, the copy's environment uses that pre-built image."""
    target = get_settings().tasks_dir / task_id
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=False)
    if docker_image:
        task_toml = target / "task.toml"
        config = TaskConfig.model_validate_toml(task_toml.read_text())
        config.environment.docker_image = docker_image
        task_toml.write_text(config.model_dump_toml())
    return target


def remove_task_dir(task_id: str) -> None:
    shutil.rmtree(get_settings().tasks_dir / task_id, ignore_errors=True)
