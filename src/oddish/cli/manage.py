"""``oddish clean``, ``cancel``, ``retry`` and ``limits``: act on tasks, experiments and queues."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from oddish.cli.api_option import with_api_option
from oddish.cli.client import ApiClient, ApiError, path_of, use_api_url
from oddish.cli.output import fail, print_json, stdout
from oddish.request_bodies import LimitUpdate

JSON_HELP = "print JSON only"


def one_target(task_id: str | None, **options: Any) -> None:
    """Exactly one of TASK_ID and the given options (by flag name) must be set."""
    given = [name for name, value in options.items() if value] + (["TASK_ID"] if task_id else [])
    if len(given) != 1:
        *first, last = ["TASK_ID", *options]
        both = f", not {' and '.join(given)}" if given else ""
        raise typer.BadParameter(f"give {', '.join(first)} or {last}{both}", param_hint="TASK_ID")


def clean(
    task_id: str | None = typer.Argument(
        None, metavar="TASK_ID", show_default=False, help="a task to delete"
    ),
    experiment: str | None = typer.Option(
        None,
        "--experiment",
        "-E",
        "-e",
        show_default=False,
        help="delete this experiment and all its tasks",
    ),
    all_experiments: bool = typer.Option(
        False, "--all-experiments", help="delete every experiment and task"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete a task, an experiment, or every experiment.

    Running trials are stopped first; then the records, the stored task and Harbor's output
    are removed. Asks for confirmation unless `--yes`.
    """
    one_target(task_id, **{"--experiment": experiment, "--all-experiments": all_experiments})
    with ApiClient() as api:
        if task_id:
            targets = [("tasks", task_id)]
            question = f"Delete task {task_id} and its trials?"
        elif experiment:
            targets = [("experiments", experiment)]
            question = f"Delete experiment {experiment} and all its tasks?"
        else:
            found = api.get("/experiments")
            targets = [("experiments", e["id"]) for e in found]
            question = (
                f"Delete all {len(found)} experiments "
                f"({sum(e['tasks_count'] for e in found)} tasks)?"
            )
        if targets and not yes:
            typer.confirm(question, abort=True, err=True)
        # Deleting stops running work first, which may take a while.
        deleted = [api.request("DELETE", path_of(kind, id_), timeout=300) for kind, id_ in targets]
    if json_output:
        print_json(deleted[0] if task_id or experiment else {"deleted": deleted})
        return
    for kind, id_ in targets:
        stdout.print(f"deleted {kind[:-1]} {id_}")
    if not targets:
        stdout.print("no experiments to delete")


def cancel(
    task_id: str | None = typer.Argument(
        None, metavar="TASK_ID", show_default=False, help="a task to cancel"
    ),
    experiment: str | None = typer.Option(
        None,
        "--experiment",
        "-E",
        "-e",
        show_default=False,
        help="cancel every unfinished task of this experiment",
    ),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(
        False,
        "--force",
        "-f",
        help="the original Oddish's 'do not ask first': ours never asks, since a cancel keeps "
        "every finished result and `oddish retry` runs the cancelled trials again",
    ),
) -> None:
    """Stop a task, or every unfinished task of an experiment.

    Running sandboxes are torn down, model slots given back and unfinished trials marked
    cancelled. Finished trials keep their results; `oddish retry` runs cancelled ones again.
    """
    del force  # accepted, see its help
    one_target(task_id, **{"--experiment": experiment})
    with ApiClient() as api:
        if task_id:
            answers = [api.request("POST", path_of("tasks", task_id, "cancel"))]
        elif experiment:
            answers = api.request("POST", path_of("experiments", experiment, "cancel"))["tasks"]
    if json_output:
        print_json(answers[0] if task_id else {"experiment": experiment, "tasks": answers})
        return
    for answer in answers:
        stdout.print(f"{answer['id']}: {answer['status']}")
    if experiment and not answers:
        stdout.print(f"experiment {experiment} has no unfinished task")


def retry(
    target_id: str | None = typer.Argument(
        None,
        metavar="TRIAL_ID|TASK_ID",
        show_default=False,
        help="a trial (trial-...) or task (task-...) id; an exp-... id works as --experiment",
    ),
    experiment: str | None = typer.Option(
        None,
        "--experiment",
        "-E",
        "-e",
        show_default=False,
        help="retry the trials that did not pass of every task of it",
    ),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the trials that did not pass again (partial, failed, error or cancelled).

    One trial (`trial-...`), those of a task (`task-...`), or those of every task of an
    experiment (`--experiment ID`, or an `exp-...` id). Passed trials are kept. Exits 1 when
    there is nothing to retry.
    """
    if target_id and target_id.startswith("exp-") and not experiment:
        target_id, experiment = None, target_id
    one_target(target_id, **{"--experiment": experiment})
    if experiment:
        path = path_of("experiments", experiment, "retry")
    elif target_id and target_id.startswith(("trial-", "task-")):
        kind = "trials" if target_id.startswith("trial-") else "tasks"
        path = path_of(kind, target_id, "retry")
    else:
        raise typer.BadParameter(
            f"{target_id!r} is neither a trial-... nor a task-... id "
            "(use --experiment for an experiment)",
            param_hint="TRIAL_ID",
        )
    with ApiClient() as api:
        try:
            # Not sent twice: a lost answer must not retry the retried trials once more.
            answer = api.request("POST", path, retry=False, raise_api_errors=True)
        except ApiError as exc:
            if exc.status_code == 409:
                fail(f"nothing to retry: {exc.detail}")
            fail(str(exc))
    if json_output:
        print_json(answer)
        return
    for task in answer.get("tasks", [answer]):
        if task["retried"]:
            stdout.print(
                f"{task['task_id']}: retrying {len(task['retried'])} trial(s) "
                f"{' '.join(task['retried'])}",
                highlight=False,
            )


limits_app = typer.Typer(rich_markup_mode="markdown")


@limits_app.callback(invoke_without_command=True)
def limits(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    api: str | None = typer.Option(
        None,
        "--api",
        show_default="$ODDISH_API_URL",
        help="the oddish API's URL, in place of ODDISH_API_URL",
    ),
) -> None:
    """Per model (queue key) concurrency limits: show them, or set one with `limits set`.

    A queue key is a normalised model (`anthropic/claude-sonnet-4-5`); `oracle` and `nop`
    without a model use `default`, other agents without a model `agent/NAME`. Keys without a
    limit of their own use the default limit, which `limits set '*' N` changes.
    """
    use_api_url(api)
    if ctx.invoked_subcommand:
        return
    with ApiClient() as client:
        answer = client.get("/limits")
    if json_output:
        print_json(answer)
        return
    stdout.print(queue_table(answer))


def queue_table(answer: dict[str, Any]) -> Table:
    """GET /limits as a table: per queue key its limit, running and waiting trials."""
    table = Table(title=f"limits (default {answer['default']})", title_justify="left")
    for column in ("queue key", "limit", "running", "waiting"):
        table.add_column(column, justify="left" if column == "queue key" else "right")
    for key, queue in sorted(answer["queues"].items()):
        table.add_row(key, str(queue["limit"]), str(queue["running"]), str(queue["waiting"]))
    return table


@limits_app.command("set")
@with_api_option
def set_limit(
    queue_key: str = typer.Argument(
        ...,
        help="a model (claude-sonnet-4-5 is taken as "
        "anthropic/claude-sonnet-4-5), default (oracle and nop), "
        "agent/NAME, or '*' for the default limit",
    ),
    limit: int = typer.Argument(..., min=1, help="trials of this key that may run at once"),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Set how many trials of a queue key may run at once, across every worker.

    Takes effect at once; a lower limit never stops running trials, new ones wait instead.
    """
    with ApiClient() as api:
        answer = api.request(
            "PUT", path_of("limits", queue_key), json=LimitUpdate(limit=limit).model_dump()
        )
    if json_output:
        print_json(answer)
        return
    stdout.print(f"limit of {answer['queue_key']} set to {answer['limit']}")
