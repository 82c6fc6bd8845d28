"""``oddish status``: one task, an experiment, or the latest tasks; once or live until done."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer
from rich.live import Live

from oddish.cli.client import ApiClient, ApiError, path_of
from oddish.cli.output import fail, print_json, stderr, stdout
from oddish.cli.task_view import is_done, render


def with_error_fields(task: dict[str, Any]) -> dict[str, Any]:
    """The task as the API gives it, plus ``error`` on it and on each trial (the API splits it
    into ``error_type`` and ``error_message``)."""
    for item in (task, *task.get("trials", ())):
        item["error"] = item.get("error_message") or item.get("error_type")
    return task


# Trials per request when an experiment's trials are read for --json.
TRIALS_PAGE = 5000


@dataclass
class TaskSet:
    """The tasks a view shows, with few requests whatever their size.

    One task is read in full. A list of tasks is read as the API's task summaries (trial counts
    by status, mean reward, the verdict in brief), every page of them: an experiment of 10k
    trials is one or two requests, not one per task. Their trials are read only for JSON
    (``for_json``), an experiment's a page of thousands at a time.
    """

    api: ApiClient
    task_id: str | None = None
    experiment: str | None = None
    only: set[str] | None = None
    recent: int = 20

    def load(self) -> list[dict[str, Any]]:
        if self.task_id:
            return [with_error_fields(self.api.get(path_of("tasks", self.task_id)))]
        if self.experiment:
            summaries = self.api.get_all_tasks(experiment=self.experiment)
        else:
            summaries = self.api.get("/tasks", params={"limit": self.recent})["tasks"]
        # Offset pages of a list that grew meanwhile repeat a task: shown once.
        unique = {s["id"]: s for s in summaries}
        return [
            with_error_fields(s)
            for s in unique.values()
            if self.only is None or s["id"] in self.only
        ]

    def for_json(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tasks with their trials: an experiment's from its trial pages (in brief), the
        latest tasks' each in full (as many as --limit)."""
        if self.task_id:
            return tasks
        if self.experiment:
            return self._with_experiment_trials(tasks)
        full = []
        for task in tasks:
            try:
                full.append(
                    with_error_fields(
                        self.api.get(path_of("tasks", task["id"]), raise_api_errors=True)
                    )
                )
            except ApiError as exc:
                if exc.status_code != 404:  # a 404: deleted since the list was read
                    fail(str(exc))
        return full

    def _with_experiment_trials(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self.experiment is not None
        trials: dict[str, list[dict[str, Any]]] = {t["id"]: [] for t in tasks}
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": TRIALS_PAGE}
            if after is not None:
                params["after"] = after
            page = self.api.get(path_of("experiments", self.experiment, "trials"), params=params)
            for trial in page["trials"]:
                # A task submitted after the list was read is not shown; nor are its trials.
                if trial["task_id"] in trials:
                    trial["error"] = trial.get("error_message") or trial.get("error_type")
                    trials[trial["task_id"]].append(trial)
            after = page["next_after"]
            if after is None:
                break
        return [{**task, "trials": trials[task["id"]]} for task in tasks]


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
            print_json(as_json(tasks.for_json(current)))
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
    status, reward, rewards, error, attempts, started_at, finished_at; verdict). With
    `--experiment`, `{"experiment": ID, "tasks": [...]}`: each task's summary (trial counts by
    status, mean reward, verdict in brief) and its trials in brief (id, index, agent, model,
    status, reward, rewards, outcome, error, started_at, finished_at; `oddish status TASK_ID`
    has their attempts and analyses). Otherwise `{"tasks": [...]}` with every task in full.
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
            # The summary request: the experiment's id and name, no page of its tasks (the
            # task list pages them).
            found = api.get(path_of("experiments", experiment), params={"tasks_limit": 0})
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
