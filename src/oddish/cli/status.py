"""``oddish status``: one task, an experiment, or the latest tasks; once or live until done."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from rich.live import Live

from oddish.cli.client import ApiClient, ApiError, path_of
from oddish.cli.manage import queue_table
from oddish.cli.output import fail, print_json, stderr, stdout
from oddish.cli.task_view import change_line, is_done, render, totals, trial_figures

# The widest a --wide layout gets: wide enough for any id, bounded for a runaway cell.
WIDE_COLUMNS = 400

EXIT_CODES_HELP = (
    "Exit codes with --watch: 0 when every trial got a reward (passed, partial or failed); 1 "
    "when any trial ended in an error (infrastructure, verifier) or was cancelled, or when the "
    "mean reward is below --fail-under; 2 for bad input; 130 when interrupted."
)
FAIL_UNDER_HELP = (
    "with --watch: exit 1 when the mean reward of the trials that got one is below this "
    "(or no trial got one)"
)
WIDE_HELP = "one line per row, however wide: ids are never folded (for copying, and for logs)"


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
    # The experiment whose scores per agent/model are shown with the tasks.
    scores_of: str | None = None

    def scores(self) -> dict[str, Any] | None:
        """The experiment's view without its tasks: its scores overall and per agent/model."""
        if self.scores_of is None:
            return None
        return self.api.get(path_of("experiments", self.scores_of), params={"tasks_limit": 0})

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


@dataclass(frozen=True)
class Watch:
    """How to show tasks: once, or ``watch``-ing until they are done (live on a terminal, one
    line per change elsewhere, JSON once done), and what makes a watch exit 1."""

    watch: bool = False
    json_output: bool = False
    interval: float = 2.0
    wide: bool = False
    fail_under: float | None = None


def show(
    tasks: TaskSet,
    how: Watch,
    *,
    as_json: Callable[[list[dict[str, Any]]], Any],
    title: str | None = None,
) -> None:
    """Print the tasks once, or with ``how.watch`` until every one is done; then exit 1 when
    the watched trials did not all get a reward, or their mean reward is under ``fail_under``."""
    if how.wide:
        stdout.width = WIDE_COLUMNS
    with_trials = tasks.task_id is not None
    current = tasks.load()
    try:
        if how.json_output:
            while how.watch and not all(is_done(t) for t in current):
                time.sleep(how.interval)
                current = tasks.load()
            print_json(as_json(tasks.for_json(current)))
        elif not how.watch:
            stdout.print(
                render(current, title=title, with_trials=with_trials, experiment=tasks.scores())
            )
        elif stdout.is_terminal and not how.wide:
            current = _watch_live(tasks, current, how.interval, title)
        else:
            current = _watch_lines(tasks, current, how.interval)
            stdout.print(
                render(current, title=title, with_trials=with_trials, experiment=tasks.scores())
            )
    except KeyboardInterrupt:
        stderr.print("stopped watching; the tasks carry on")
        raise typer.Exit(130) from None
    if how.watch:
        settle(current, how.fail_under)


def _watch_live(
    tasks: TaskSet, current: list[dict[str, Any]], interval: float, title: str | None
) -> list[dict[str, Any]]:
    with_trials = tasks.task_id is not None

    def view() -> Any:
        return render(current, title=title, with_trials=with_trials, experiment=tasks.scores())

    with Live(view(), console=stdout, auto_refresh=False) as live:
        while not all(is_done(t) for t in current):
            time.sleep(interval)
            current = tasks.load()
            live.update(view(), refresh=True)
    return current


def _watch_lines(
    tasks: TaskSet, current: list[dict[str, Any]], interval: float
) -> list[dict[str, Any]]:
    """For logs (CI): a line, with the time, for each task whenever its status or its trials'
    counts change; nothing while nothing does. Plain text, each line ended and flushed."""
    shown: dict[str, str] = {}
    while True:
        for task in current:
            line = change_line(task)
            if shown.get(task["id"]) != line:
                shown[task["id"]] = line
                sys.stdout.write(f"{datetime.now():%H:%M:%S} {line}\n")
        sys.stdout.flush()
        if all(is_done(t) for t in current):
            return current
        time.sleep(interval)
        current = tasks.load()


def settle(tasks: list[dict[str, Any]], fail_under: float | None) -> None:
    """Exit 1, saying why on stderr, when a watched trial got no reward (an error, a cancel, or
    never run by a task that ended) or the mean reward is below ``fail_under``."""
    t = totals([trial_figures(task) for task in tasks])
    reasons = []
    unrewarded = t.errored + sum(t.unfinished.values())
    if unrewarded:
        reasons.append(
            f"{unrewarded} of {t.trials} trial(s) got no reward: "
            + ", ".join(
                f"{n} {kind}"
                for kind, n in {
                    "error": t.results.get("error", 0),
                    "cancelled": t.results.get("cancelled", 0),
                    "never finished": sum(t.unfinished.values()),
                }.items()
                if n
            )
        )
    if fail_under is not None:
        if t.mean_reward is None:
            reasons.append(f"no trial got a reward (--fail-under {fail_under:g})")
        elif t.mean_reward < fail_under:
            reasons.append(f"mean reward {t.mean_reward:.3f} is below --fail-under {fail_under:g}")
    if reasons:
        fail("; ".join(reasons))


def status(
    task_id: str | None = typer.Argument(
        None, metavar="TASK_ID", show_default=False, help="a task id (task-...)"
    ),
    experiment: str | None = typer.Option(
        None, "--experiment", "-E", "-e", help="show every task of this experiment (id or name)"
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
    fail_under: float | None = typer.Option(
        None, "--fail-under", show_default=False, help=FAIL_UNDER_HELP
    ),
    wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="without TASK_ID or --experiment: show each queue key's limit, running and "
        "waiting trials above the latest tasks",
    ),
) -> None:
    """Show tasks: progress, trials by status, mean reward and verdict.

    What to show:

        oddish status                           # the latest tasks
        oddish status TASK_ID --watch           # a task and its trials, live until done
        oddish status --experiment ID --watch   # every task of an experiment, live until done

    A task is done when it is completed (its analyses and verdict included), failed or
    cancelled. With `--json`: for TASK_ID the task object (id, status, ..., scores, trials
    with id, status, result, reward, rewards, error, attempts, started_at, finished_at;
    verdict). With
    `--experiment`, `{"experiment": ID, "tasks": [...]}`: each task's summary (trial counts by
    status, mean reward, scores, verdict in brief) and its trials in brief (id, index, agent,
    model, status, result, reward, rewards, outcome, error, started_at, finished_at; `oddish
    status TASK_ID` has their attempts and analyses). Otherwise `{"tasks": [...]}` with every
    task in full.

    A trial shows its result once it finished: passed (reward 1), partial, failed (reward 0),
    error (infrastructure or verifier: no reward), cancelled, unscored (verification
    disabled). `--experiment` adds its scores per agent/model: trials, pass@1 with its 95%
    interval, pass@k, mean reward of the trials that got one, errors. Outside a terminal
    `--watch` prints one line per change (for CI logs), then the tables.

    Exit codes with `--watch`: 0 when every trial got a reward; 1 when any trial ended in an
    error or was cancelled, or the mean reward is below `--fail-under`; 130 when interrupted.
    """
    if task_id and experiment:
        raise typer.BadParameter(
            "give a TASK_ID or --experiment, not both", param_hint="'--experiment'"
        )
    if fail_under is not None and not watch:
        raise typer.BadParameter(
            "--fail-under judges finished runs: add --watch", param_hint="'--fail-under'"
        )
    how = Watch(watch, json_output, interval, wide, fail_under)
    with ApiClient() as api:
        if task_id:
            show(TaskSet(api, task_id=task_id), how, as_json=lambda tasks: tasks[0])
        elif experiment:
            # The summary request: the experiment's id and name, no page of its tasks (the
            # task list pages them).
            found = api.get(path_of("experiments", experiment), params={"tasks_limit": 0})
            show(
                TaskSet(api, experiment=found["id"], scores_of=found["id"]),
                how,
                title=f"experiment {found['name']} ({found['id']})",
                as_json=lambda tasks: {"experiment": found["id"], "tasks": tasks},
            )
        else:
            if verbose and not json_output:
                stdout.print(queue_table(api.get("/limits")))
            show(
                TaskSet(api, recent=limit),
                how,
                title="latest tasks",
                as_json=lambda tasks: {"tasks": tasks},
            )
