"""``oddish status``: one task, an experiment, or the latest tasks; once or live until done."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.live import Live

from oddish.cli.client import ApiClient, ApiError, path_of
from oddish.cli.output import fail, print_json, stderr, stdout
from oddish.cli.task_view import is_done, render


def with_error_fields(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the API gives it, plus ``error`` on it and on each trial (the API splits it
    into ``error_type`` and ``error_message``)."""
    for item in (task, *task["trials"]):
        item["error"] = item.get("error_message") or item.get("error_type")
    return task


def _signature(status: str, trial_status_counts: dict[str, int]) -> tuple[Any, ...]:
    return status, tuple(sorted(trial_status_counts.items()))


@dataclass
class TaskSet:
    """The tasks a view shows, with their trials, kept current with few requests.

    A list of tasks comes from the task summaries (every page of them); a task's details are
    fetched again only when its status or its trials' status counts have changed, because a
    trial's reward and error are recorded together with its status.
    """

    api: ApiClient
    task_id: str | None = None
    experiment: str | None = None
    only: set[str] | None = None
    recent: int = 20
    _details: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)

    def load(self) -> list[dict[str, Any]]:
        if self.task_id:
            return [with_error_fields(self.api.get(path_of("tasks", self.task_id)))]
        if self.experiment:
            summaries = self.api.get_all_tasks(experiment=self.experiment)
        else:
            summaries = self.api.get("/tasks", params={"limit": self.recent})["tasks"]
        tasks = []
        for summary in summaries:
            if self.only is not None and summary["id"] not in self.only:
                continue
            cached = self._details.get(summary["id"])
            wanted = _signature(summary["status"], summary["trial_status_counts"])
            if cached is None or cached[0] != wanted:
                try:
                    detail = with_error_fields(
                        self.api.get(path_of("tasks", summary["id"]), raise_api_errors=True)
                    )
                except ApiError as exc:
                    if exc.status_code == 404:  # deleted since the list was read
                        continue
                    fail(str(exc))
                counts = Counter(t["status"] for t in detail["trials"])
                cached = (_signature(detail["status"], dict(counts)), detail)
                self._details[summary["id"]] = cached
            tasks.append(cached[1])
        return tasks


def show(
    tasks: TaskSet,
    *,
    watch: bool,
    json_output: bool,
    as_json: Callable[[list[dict[str, Any]]], Any],
    interval: float = 2.0,
    title: str | None = None,
) -> None:
    """Print the tasks once, or with ``watch`` until every one is done (live, or JSON then)."""
    current = tasks.load()
    try:
        if json_output:
            while watch and not all(is_done(t) for t in current):
                time.sleep(interval)
                current = tasks.load()
            print_json(as_json(current))
            return
        with_trials = tasks.task_id is not None
        if not watch:
            stdout.print(render(current, title=title, with_trials=with_trials))
            return
        with Live(
            render(current, title=title, with_trials=with_trials),
            console=stdout,
            auto_refresh=False,
        ) as live:
            while not all(is_done(t) for t in current):
                time.sleep(interval)
                current = tasks.load()
                live.update(render(current, title=title, with_trials=with_trials), refresh=True)
    except KeyboardInterrupt:
        stderr.print("stopped watching; the tasks carry on")
        raise typer.Exit(130) from None


def status(
    task_id: str | None = typer.Argument(
        None, metavar="TASK_ID", show_default=False, help="a task id (task-...)"
    ),
    experiment: str | None = typer.Option(
        None, "--experiment", "-E", help="show every task of this experiment (id or name)"
    ),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="refresh until every shown task is done (completed, failed "
        "or cancelled, analysis and verdict included)",
    ),
    json_output: bool = typer.Option(
        False, "--json", help="print JSON only (with --watch: once all are done)"
    ),
    limit: int = typer.Option(
        20,
        "--limit",
        "-n",
        min=1,
        max=500,
        help="without TASK_ID or --experiment: how many recent tasks",
    ),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="seconds between refreshes"),
) -> None:
    """Show tasks: progress, trials by status, mean reward and verdict.

    What to show:

        oddish status                           # the latest tasks
        oddish status TASK_ID --watch           # a task and its trials, live until done
        oddish status --experiment ID --watch   # every task of an experiment, live until done

    A task is done when it is completed (its analyses and verdict included), failed or
    cancelled. With `--json`: for TASK_ID the task object (id, status, ..., trials with id,
    status, reward, rewards, error, attempts, started_at, finished_at; verdict), otherwise
    `{"experiment": ID, "tasks": [...]}` or `{"tasks": [...]}` with every task in full.
    """
    if task_id and experiment:
        raise typer.BadParameter(
            "give a TASK_ID or --experiment, not both", param_hint="'--experiment'"
        )
    with ApiClient() as api:
        if task_id:
            show(
                TaskSet(api, task_id=task_id),
                watch=watch,
                json_output=json_output,
                interval=interval,
                as_json=lambda tasks: tasks[0],
            )
        elif experiment:
            found = api.get(path_of("experiments", experiment))
            show(
                TaskSet(api, experiment=found["id"]),
                watch=watch,
                json_output=json_output,
                interval=interval,
                title=f"experiment {found['name']} ({found['id']})",
                as_json=lambda tasks: {"experiment": found["id"], "tasks": tasks},
            )
        else:
            show(
                TaskSet(api, recent=limit),
                watch=watch,
                json_output=json_output,
                interval=interval,
                title="latest tasks",
                as_json=lambda tasks: {"tasks": tasks},
            )
