"""Rich renderings of tasks and their trials for ``oddish status`` and ``oddish run --watch``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TrialFigures:
    """What the task table shows of a task's trials."""

    total: int
    finished: int
    by_status: dict[str, int]
    mean_reward: float | None


def trial_figures(task: dict[str, Any]) -> TrialFigures:
    """From a task summary of a list (counted by the API, its mean reward that of finished
    trials), or from a task read in full with its trials."""
    if "trial_status_counts" in task:
        return TrialFigures(
            total=task["trials_count"],
            finished=task["trials_finished"],
            by_status=task["trial_status_counts"],
            mean_reward=task["mean_reward"],
        )
    trials = task["trials"]
    return TrialFigures(
        total=len(trials),
        finished=sum(t["status"] in TERMINAL_JOB_STATUSES for t in trials),
        by_status=dict(Counter(t["status"] for t in trials)),
        mean_reward=mean_reward(trials),
    )


def overall_mean_reward(figures: list[TrialFigures]) -> float | None:
    """The tasks' mean rewards weighed by their finished trials."""
    weighed = [(f.mean_reward, f.finished) for f in figures if f.mean_reward is not None]
    n = sum(finished for _, finished in weighed)
    return sum(m * finished for m, finished in weighed) / n if n else None


def trial_counts(by_status: dict[str, int]) -> Text:
    order = TRIAL_STATUS_ORDER + sorted(set(by_status) - set(TRIAL_STATUS_ORDER))
    return Text(" · ").join(
        Text(f"{by_status[s]} {s}", style=STYLES.get(s, "")) for s in order if by_status.get(s)
    )


def progress(figures: TrialFigures) -> Table:
    cell = Table.grid(padding=(0, 1))
    cell.add_row(
        ProgressBar(total=max(figures.total, 1), completed=figures.finished, width=16),
        f"{figures.finished}/{figures.total}",
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
        figures = trial_figures(task)
        table.add_row(
            f"{escape(task.get('name') or '')}\n[dim]{task['id']}[/dim]",
            styled(task["status"]),
            progress(figures),
            trial_counts(figures.by_status),
            reward_text(figures.mean_reward),
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
    figures = [trial_figures(t) for t in tasks]
    footer = Text(
        f"{done}/{len(tasks)} tasks done · {sum(f.total for f in figures)} trials · mean reward "
        f"{reward_text(overall_mean_reward(figures))}",
        style="bold",
    )
    parts: list[RenderableType] = [tasks_table(tasks, title)]
    if with_trials:
        parts += [trials_table(task) for task in tasks]
    return Group(*parts, footer)
