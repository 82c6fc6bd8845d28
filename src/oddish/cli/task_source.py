"""Which task directories a run submits, and the archive each one is uploaded as."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

import typer

from oddish.cli.output import fail

# Never part of a task, and a repository's history can be larger than the upload limit.
SKIPPED_NAMES = {".git", "__pycache__", ".DS_Store"}


def is_task_dir(path: Path) -> bool:
    return (path / "task.toml").is_file()


def task_dirs_from_paths(paths: Iterable[Path], *, param_hint: str) -> list[Path]:
    """Task directories named directly, or the task directories inside a dataset directory."""
    found: list[Path] = []
    for path in paths:
        path = path.expanduser()
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist", param_hint=param_hint)
        if not path.is_dir():
            raise typer.BadParameter(f"{path} is not a directory", param_hint=param_hint)
        if is_task_dir(path):
            found.append(path.resolve())
            continue
        children = sorted(c.resolve() for c in path.iterdir() if c.is_dir() and is_task_dir(c))
        if not children:
            raise typer.BadParameter(
                f"{path} is not a Harbor task directory (no task.toml) and holds none",
                param_hint=param_hint,
            )
        found += children
    return list(dict.fromkeys(found))  # each task once, in the order given


def task_dirs_from_registry(dataset: str) -> list[Path]:
    """Download a dataset (``name`` or ``name@version``) with Harbor's registry client."""
    from harbor.registry.client.factory import RegistryClientFactory

    try:
        items = asyncio.run(RegistryClientFactory.create().download_dataset(dataset))
    except Exception as exc:  # any failure of the registry means the same to the user
        fail(
            f"the Harbor dataset registry could not be reached or has no {dataset!r} "
            f"({type(exc).__name__}: {exc}); pass task directories instead"
        )
    return [item.downloaded_path for item in items]


def select_tasks(
    dirs: list[Path], *, include: list[str] | None, exclude: list[str] | None, limit: int | None
) -> list[Path]:
    """Harbor's task filters: name globs to keep, name globs to drop, then at most ``limit``."""
    if include:
        dirs = [d for d in dirs if any(fnmatch(d.name, p) for p in include)]
    if exclude:
        dirs = [d for d in dirs if not any(fnmatch(d.name, p) for p in exclude)]
    return dirs[:limit] if limit is not None else dirs


def task_archive(task_dir: Path) -> bytes:
    """A gzipped tar of the task under one folder named after it (the API names the task so)."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if Path(info.name).name in SKIPPED_NAMES:
            return None
        # In whole seconds: a fraction costs each member an extended (pax) header, to write here
        # and to read on the API.
        info.mtime = int(info.mtime)
        return info

    buffer = io.BytesIO()
    try:
        # dereference: the API refuses links, so a linked file is sent as the file it points to.
        with tarfile.open(fileobj=buffer, mode="w:gz", dereference=True) as tar:
            tar.add(task_dir, arcname=task_dir.name, filter=keep)
    except OSError as exc:  # a dangling link, an unreadable file, a link loop
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"cannot pack task {task_dir}: {where}{exc.strerror or exc}", code=2)
    return buffer.getvalue()
