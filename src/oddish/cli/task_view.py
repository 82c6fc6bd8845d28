"""Rich renderings of tasks and their trials for ``oddish status`` and ``oddish run --watch``:
each trial by its result (passed, partial, failed, error, cancelled), ids whole, and the scores
per agent/model that the API computes (``oddish.pass_rates``); plain lines for logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from oddish.statuses import (
    RETRYABLE_RESULTS,
    TERMINAL_JOB_STATUSES,
    TERMINAL_TASK_STATUSES,
    JobStatus,
    TrialResult,
)

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
    "passed": "green",
    "partial": "yellow",
    "error": "bold red",
    "unscored": "dim",
}
RESULT_ORDER: list[str] = [r.value for r in TrialResult]
# Trial statuses of trials still under way, in the order a trial passes through them.
UNFINISHED_ORDER: list[str] = [
    JobStatus.PENDING,
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
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
    # The API's scores of the task (``oddish.pass_rates``): results, mean reward of the scored.
    scores: dict[str, Any]


def trial_figures(task: dict[str, Any]) -> TrialFigures:
    """From a task summary of a list (counted by the API, its mean reward that of finished
    trials), or from a task read in full with its trials."""
    if "trial_status_counts" in task:
        return TrialFigures(
            total=task["trials_count"],
            finished=task["trials_finished"],
            by_status=task["trial_status_counts"],
            mean_reward=task["mean_reward"],
            scores=task["scores"],
        )
    trials = task["trials"]
    return TrialFigures(
        total=len(trials),
        finished=sum(t["status"] in TERMINAL_JOB_STATUSES for t in trials),
        by_status=dict(Counter(t["status"] for t in trials)),
        mean_reward=mean_reward(trials),
        scores=task["scores"],
    )


@dataclass(frozen=True)
class Totals:
    """The shown tasks' trials together: by result (and by status while unfinished), and the
    mean reward of those that got one."""

    trials: int
    results: dict[str, int]
    unfinished: dict[str, int]
    scored: int
    mean_reward: float | None

    @property
    def errored(self) -> int:
        """Trials that ended without a reward they could be judged by: errors and cancels."""
        return self.results.get(TrialResult.ERROR, 0) + self.results.get(TrialResult.CANCELLED, 0)

    @property
    def not_passed(self) -> int:
        return sum(self.results.get(r, 0) for r in RETRYABLE_RESULTS)


def totals(figures: list[TrialFigures]) -> Totals:
    results: Counter[str] = Counter()
    unfinished: Counter[str] = Counter()
    scored = 0
    reward_sum = 0.0
    for f in figures:
        results.update({k: v for k, v in f.scores["results"].items() if k in RESULT_ORDER})
        unfinished.update(
            {k: v for k, v in f.by_status.items() if k not in TERMINAL_JOB_STATUSES and v}
        )
        if f.scores["mean_reward"] is not None:
            scored += f.scores["scored"]
            reward_sum += f.scores["mean_reward"] * f.scores["scored"]
    return Totals(
        trials=sum(f.total for f in figures),
        results=dict(results),
        unfinished=dict(unfinished),
        scored=scored,
        mean_reward=reward_sum / scored if scored else None,
    )


def counts_text(results: dict[str, int], unfinished: dict[str, int]) -> Text:
    """``2 passed · 1 failed · 1 running``: finished trials by result, the others by status."""
    order = [*RESULT_ORDER, *UNFINISHED_ORDER]
    counts = {**results, **unfinished}
    order += sorted(set(counts) - set(order))
    return Text(" · ").join(
        Text(f"{counts[k]} {k}", style=STYLES.get(k, "")) for k in order if counts.get(k)
    )


def trial_counts(figures: TrialFigures) -> Text:
    unfinished = {k: v for k, v in figures.by_status.items() if k not in TERMINAL_JOB_STATUSES}
    return counts_text(figures.scores["results"], unfinished)


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


def passed_text(scores: dict[str, Any]) -> str:
    """``2/3 passed``: of the trials that got a reward."""
    return f"{scores['passed']}/{scores['scored']} passed" if scores["scored"] else "-"


def tasks_table(tasks: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("task", "status", "trials finished", "trials", "passed", "mean reward"):
        # The ids' column is the last to give way to a narrow terminal, and then folds: every
        # character stays, to be copied.
        table.add_column(
            column,
            justify="right" if column in ("passed", "mean reward") else "left",
            overflow="fold",
            no_wrap=column in ("task", "status", "passed", "mean reward"),
        )
    table.add_column("verdict", overflow="fold")
    for task in tasks:
        figures = trial_figures(task)
        table.add_row(
            Text.assemble(task.get("name") or "", "\n", (task["id"], "dim")),
            styled(task["status"]),
            progress(figures),
            trial_counts(figures),
            passed_text(figures.scores),
            reward_text(figures.scores["mean_reward"]),
            escape(verdict_text(task)),
        )
    return table


def result_of(trial: dict[str, Any]) -> str:
    """The trial's result once it finished (passed, partial, failed, error, cancelled,
    unscored), its status until then."""
    return trial.get("result") or trial["status"]


def trials_table(task: dict[str, Any]) -> Table:
    table = Table(title=f"trials of {task['id']}", title_justify="left")
    columns = ("#", "trial", "agent", "model", "result", "reward", "attempts", "judge", "error")
    for column in columns:
        numeric = column in ("#", "reward", "attempts")
        # Nothing is cut: an id folds onto a second line at worst (--wide keeps it on one).
        table.add_column(
            column,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=column in ("trial", "result"),
        )
    for trial in task["trials"]:
        table.add_row(
            str(trial["index"]),
            trial["id"],
            escape(trial["agent"]),
            escape(trial["model"] or "-"),
            styled(result_of(trial)),
            reward_text(trial["reward"]),
            str(len(trial["attempts"])),
            escape(judge_text(trial)),
            escape((trial.get("error") or "")[:200]),
        )
    return table


def retry_hint(task: dict[str, Any]) -> Text | None:
    """What ``oddish retry`` would run again of a task, once its trials finished."""
    retryable = [t["id"] for t in task.get("trials", ()) if t.get("result") in RETRYABLE_RESULTS]
    if not retryable:
        return None
    return Text(
        f"{len(retryable)} trial(s) did not pass; run them again with: oddish retry {task['id']}"
        + (f" (or oddish retry {retryable[0]} for one)" if len(retryable) > 1 else ""),
        style="dim",
    )


def footer_text(tasks: list[dict[str, Any]]) -> str:
    """``2/3 tasks done · 9 trials: 5 passed · 1 failed · 3 running · mean reward 0.833``."""
    t = totals([trial_figures(task) for task in tasks])
    counts = counts_text(t.results, t.unfinished).plain or "none yet"
    return (
        f"{sum(is_done(task) for task in tasks)}/{len(tasks)} tasks done · {t.trials} trials: "
        f"{counts} · mean reward {reward_text(t.mean_reward)}"
    )


def pass_at_1_text(scores: dict[str, Any]) -> str:
    p = scores.get("pass_at_1")
    if p is None:
        return "-"
    return f"{p['estimate']:.3f} [{p['low']:.3f}, {p['high']:.3f}]"


def pass_at_k_text(scores: dict[str, Any]) -> str:
    """pass@k at the largest k every scored task reaches (``-`` when that is 1)."""
    curve = scores.get("pass_at_k") or []
    if not curve:
        return "-"
    every = [p for p in curve if p["tasks"] == curve[0]["tasks"]][-1]
    return "-" if every["k"] == 1 else f"pass@{every['k']} {every['estimate']:.3f}"


def errors_text(scores: dict[str, Any]) -> str:
    kinds = ", ".join(f"{n} {kind}" for kind, n in scores["errors"].items() if n)
    return f"{scores['errored']} ({kinds})" if kinds else str(scores["errored"])


def scores_table(experiment: dict[str, Any]) -> Table:
    """Per agent/model and overall, as ``GET /experiments/{id}`` gives them: trials, pass@1 with
    its 95% interval, pass@k, mean reward (of the trials that got a reward), errors."""
    table = Table(
        title=f"scores of experiment {experiment['id']}", title_justify="left", expand=False
    )
    table.add_column("agent / model", overflow="fold", no_wrap=True)
    for column in ("tasks", "trials", "scored", "pass@1 [95% CI]", "pass@k", "mean reward"):
        table.add_column(column, justify="right", overflow="fold")
    table.add_column("errors", overflow="fold")
    rows = [(key, group["scores"]) for key, group in experiment["by_agent_model"].items()]
    if len(rows) != 1:
        rows.append(("overall", experiment["overall"]["scores"]))
    for key, scores in rows:
        table.add_row(
            escape(key),
            str(scores["tasks"]),
            str(scores["trials"]),
            str(scores["scored"]),
            pass_at_1_text(scores),
            pass_at_k_text(scores),
            reward_text(scores["mean_reward"]),
            Text(errors_text(scores), style="red" if scores["errored"] else ""),
        )
    return table


def render(
    tasks: list[dict[str, Any]],
    *,
    title: str | None = None,
    with_trials: bool = False,
    experiment: dict[str, Any] | None = None,
) -> RenderableType:
    if not tasks:
        return Text("no tasks", style="dim")
    # What the judge says needs review comes first (the order is otherwise kept).
    tasks = sorted(tasks, key=lambda t: not needs_review(t))
    parts: list[RenderableType] = [tasks_table(tasks, title)]
    if with_trials:
        for task in tasks:
            parts.append(trials_table(task))
            hint = retry_hint(task) if is_done(task) else None
            if hint is not None:
                parts.append(hint)
    if experiment is not None:
        parts.append(scores_table(experiment))
    return Group(*parts, Text(footer_text(tasks), style="bold"))


def change_line(task: dict[str, Any]) -> str:
    """One task's state on one line, for logs: ``task-... hello-pass running · 1 passed ...``."""
    figures = trial_figures(task)
    unfinished = {k: v for k, v in figures.by_status.items() if k not in TERMINAL_JOB_STATUSES}
    counts = counts_text(figures.scores["results"], unfinished).plain
    return f"{task['id']} {task.get('name') or ''} {task['status']} · {counts or 'no trials'}"
