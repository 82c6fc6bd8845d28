"""``oddish upload``: store task directories on the API without running anything."""

from __future__ import annotations

from pathlib import Path

import typer

from oddish.cli.client import ApiClient
from oddish.cli.output import print_json, stdout
from oddish.cli.task_source import task_archive, task_dirs_from_paths


def upload(
    paths: list[Path] = typer.Argument(
        ...,
        metavar="PATH",
        show_default=False,
        help="task directories (with task.toml), or directories of task directories",
    ),
    json_output: bool = typer.Option(
        False, "--json", help='print only [{"upload_id", "name", "content_hash", "reused", ...}]'
    ),
) -> None:
    """Upload tasks, checked and stored by content, without running them.

    Each answer's `upload_id` is what `POST /tasks/sweep` takes; an unchanged task answers the
    upload already stored (`reused`). Uploads no sweep used are deleted after
    ODDISH_UPLOAD_RETENTION_SEC (24 h). `oddish run PATH` uploads and runs in one go.
    """
    task_dirs = task_dirs_from_paths(paths, param_hint="'PATH'")
    answers = []
    with ApiClient() as api:
        for task_dir in task_dirs:
            archive = task_archive(task_dir)
            answers.append(
                api.request(
                    "POST",
                    "/tasks/upload",
                    retry=True,  # stored by content: sending it twice stores it once
                    timeout=600,
                    files={"file": (f"{task_dir.name}.tar.gz", archive, "application/gzip")},
                )
            )
    if json_output:
        print_json(answers)
        return
    for answer in answers:
        stdout.print(
            f"{answer['upload_id']}  {answer['name']}  sha256 {answer['content_hash'][:12]}"
            f"{'  (unchanged)' if answer['reused'] else ''}",
            highlight=False,
        )
