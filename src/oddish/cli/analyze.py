"""``oddish analyze``: the judge again on finished tasks, without running any trial again."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import typer

from oddish.cli.client import ApiClient, path_of
from oddish.cli.manage import JSON_HELP, one_target
from oddish.cli.output import fail, print_json, stderr, stdout
from oddish.request_bodies import JudgeAgainRequest

WAIT_INTERVAL_SEC = 2.0


def _finished_after(row: dict[str, Any] | None, since: datetime) -> bool:
    finished = (row or {}).get("finished_at")
    return isinstance(finished, str) and datetime.fromisoformat(finished) >= since


def _judged_again(task: dict[str, Any], started: dict[str, Any]) -> bool:
    """Whether every analysis and the verdict asked for were recorded since the judge began."""
    since = datetime.fromisoformat(started["started_at"])
    wanted = set(started["trial_ids"])
    analyses = [t.get("analysis") for t in task["trials"] if t["id"] in wanted]
    done = len(analyses) == len(wanted) and all(_finished_after(a, since) for a in analyses)
    return done and (not started["verdict"] or _finished_after(task.get("verdict"), since))


def analyze(
    task_id: str | None = typer.Argument(
        None, metavar="TASK_ID", show_default=False, help="a finished task to judge again"
    ),
    experiment: str | None = typer.Option(
        None,
        "--experiment",
        "-E",
        "-e",
        show_default=False,
        help="judge every finished task of this experiment (id or name) again",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        show_default="the task's judge model, else the server's ODDISH_ANALYSIS_MODEL",
        help="the judge's model for this time, a LiteLLM name (openai/gpt-5-mini, ...)",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="wait until every new analysis and verdict is recorded"
    ),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Judge finished tasks again: every trial's analysis, then the task's verdict.

    No trial runs again; only the judge's calls are made (and paid for) again, holding slots of
    the judge model's queue key like trials. Refused (exit 1) while a task still runs or is being
    judged, and when the server has no judge model and none is given.
    """
    one_target(task_id, **{"--experiment": experiment})
    body = JudgeAgainRequest(model=model).model_dump() if model else None
    with ApiClient() as api:
        if task_id:
            started = [
                api.request("POST", path_of("tasks", task_id, "analysis", "retry"), json=body)
            ]
        else:
            answer = api.request(
                "POST", path_of("experiments", experiment or "", "analysis", "retry"), json=body
            )
            started = answer["tasks"]
        running = [s for s in started if "workflow_id" in s]
        if wait and running:
            pending = {s["task_id"]: s for s in running}
            while pending:
                for one_id, one in list(pending.items()):
                    if _judged_again(api.get(path_of("tasks", one_id)), one):
                        del pending[one_id]
                        if not json_output:
                            stderr.print(f"{one_id}: judged again", highlight=False)
                if pending:
                    time.sleep(WAIT_INTERVAL_SEC)
    if json_output:
        print_json({"tasks": started})
        return
    for one in started:
        if "skipped" in one:
            stdout.print(f"{one['task_id']}: skipped: {one['skipped']}", highlight=False)
        else:
            stdout.print(
                f"{one['task_id']}: judging {len(one['trial_ids'])} trials"
                + (" and the verdict" if one["verdict"] else "")
                + f" again with {one['analysis_model']}",
                highlight=False,
                soft_wrap=True,
            )
    if not running:
        fail("no finished task to judge again")
