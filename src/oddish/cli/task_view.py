"""Rich renderings of tasks and their trials for ``oddish status`` and ``oddish run --watch``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from oddish.statuses import TERMINAL_JOB_STATUSES, TERMINAL_TASK_STATUSES, JobStatus

STYLES = {
    "pending": "dim",
    "queued": "yellow",
    "running": "blue",
    "retrying": "yellow",
    "analyzing": "cyan",
    "verdict_pending": "magenta",
    "success": "green",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}
# Trial statuses in the order a trial passes through them.
TRIAL_STATUS_ORDER: list[str] = [
    JobStatus.PENDING,
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
    JobStatus.SUCCESS,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
]


def is_done(task: dict[str, Any]) -> bool:
    """Terminal, analysis and verdict included: ``completed`` comes only after the verdict."""
    return task["status"] in TERMINAL_TASK_STATUSES


def styled(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def mean_reward(trials: list[dict[str, Any]]) -> float | None:
    """Mean over the trials scored so far."""
    rewards = [t["reward"] for t in trials if t.get("reward") is not None]
    return sum(rewards) / len(rewards) if rewards else None


def trial_counts(trials: list[dict[str, Any]]) -> Text:
    counts = Counter(t["status"] for t in trials)
    order = TRIAL_STATUS_ORDER + sorted(set(counts) - set(TRIAL_STATUS_ORDER))
    return Text(" · ").join(
        Text(f"{counts[s]} {s}", style=STYLES.get(s, "")) for s in order if counts[s]
    )


def progress(trials: list[dict[str, Any]]) -> Table:
    finished = sum(t["status"] in TERMINAL_JOB_STATUSES for t in trials)
    cell = Table.grid(padding=(0, 1))
    cell.add_row(
        ProgressBar(total=max(len(trials), 1), completed=finished, width=16),
        f"{finished}/{len(trials)}",
    )
    return cell


def reward_text(reward: float | None) -> str:
    return "-" if reward is None else f"{reward:.3f}"


def needs_review(task: dict[str, Any]) -> bool:
    """The judge's verdict says the task is not fit as it is."""
    judge = (task.get("verdict") or {}).get("judge") or {}
    return judge.get("is_good") is False


def verdict_text(task: dict[str, Any]) -> str:
    """The judge's verdict first (when it gave one), then the counts."""
    verdict = task.get("verdict") or {}
    judge = verdict.get("judge") or {}
    counts = verdict.get("summary") or "-"
    if judge.get("is_good") is False:
        issue = judge.get("primary_issue") or "see its analyses"
        return f"needs review ({judge.get('confidence')}): {issue} · {counts}"
    if judge.get("is_good") is True:
        return f"good ({judge.get('confidence')}) · {counts}"
    if judge.get("error"):
        return f"judge failed: {judge['error'][:120]} · {counts}"
    return counts


def judge_text(trial: dict[str, Any]) -> str:
    """The judge's classification and subtype of a trial, '-' when it was not asked."""
    judge = (trial.get("analysis") or {}).get("judge") or {}
    if judge.get("classification"):
        corrected = (
            f" (judge said {judge['corrected_from']})" if judge.get("corrected_from") else ""
        )
        return f"{judge['classification']} · {judge.get('subtype') or '-'}{corrected}"
    if judge.get("error"):
        return "judge failed"
    return "-"


def tasks_table(tasks: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in (
        "task",
        "status",
        "trials finished",
        "trials by status",
        "mean reward",
        "verdict",
    ):
        table.add_column(column, justify="right" if column == "mean reward" else "left")
    for task in tasks:
        table.add_row(
            f"{escape(task.get('name') or '')}\n[dim]{task['id']}[/dim]",
            styled(task["status"]),
            progress(task["trials"]),
            trial_counts(task["trials"]),
            reward_text(mean_reward(task["trials"])),
            escape(verdict_text(task)),
        )
    return table


def trials_table(task: dict[str, Any]) -> Table:
    table = Table(title=f"trials of {task['id']}", title_justify="left")
    columns = ("#", "trial", "agent", "model", "status", "reward", "attempts", "judge", "error")
    for column in columns:
        numeric = column in ("#", "reward", "attempts")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            overflow="fold" if column in ("error", "judge") else "ellipsis",
        )
    for trial in task["trials"]:
        table.add_row(
            str(trial["index"]),
            trial["id"],
            escape(trial["agent"]),
            escape(trial["model"] or "-"),
            styled(trial["status"]),
            reward_text(trial["reward"]),
            str(len(trial["attempts"])),
            escape(judge_text(trial)),
            escape((trial.get("error") or "")[:200]),
        )
    return table


def render(
    tasks: list[dict[str, Any]], *, title: str | None = None, with_trials: bool = False
) -> RenderableType:
    if not tasks:
        return Text("no tasks", style="dim")
    # What the judge says needs review comes first (the order is otherwise kept).
    tasks = sorted(tasks, key=lambda t: not needs_review(t))
    done = sum(is_done(t) for t in tasks)
    trials = [trial for task in tasks for trial in task["trials"]]
    footer = Text(
        f"{done}/{len(tasks)} tasks done · {len(trials)} trials · mean reward "
        f"{reward_text(mean_reward(trials))}",
        style="bold",
    )
    parts: list[RenderableType] = [tasks_table(tasks, title)]
    if with_trials:
        parts += [trials_table(task) for task in tasks]
    return Group(*parts, footer)
