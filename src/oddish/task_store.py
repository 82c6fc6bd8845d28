"""Keeps a private copy of each submitted task, so later edits of the user's directory change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from oddish.config import get_settings


def store_task_dir(source: Path, task_id: str) -> Path:
    target = get_settings().tasks_dir / task_id
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=False)
    return target


def remove_task_dir(task_id: str) -> None:
    shutil.rmtree(get_settings().tasks_dir / task_id, ignore_errors=True)
