"""Figures as the pages show them: times, durations, rates, money, the trial's phase timeline,
the colour class of a pass rate. Pure functions of the API's views (the Jinja filters)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Harbor's phases of a trial, in order, with the names the page gives them.
PHASES = (
    ("environment_setup", "environment"),
    ("agent_setup", "agent setup"),
    ("agent_execution", "agent"),
    ("verifier", "verifier"),
)
# What the judge's verdict says when a task is not fit as it is.
NEEDS_REVIEW = "needs review"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def when(value: str | None) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def seconds_between(start: str | None, end: str | None) -> float | None:
    a, b = parse_time(start), parse_time(end)
    return (b - a).total_seconds() if a and b else None


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def percent(rate: float | None) -> str:
    return "-" if rate is None or math.isnan(rate) else f"{100 * rate:.0f}%"


def usd(cost: float | None) -> str:
    if cost is None:
        return "-"
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def rate_class(rate: float | None) -> str:
    """A CSS class per tenth of the pass rate (colours in dashboard.css)."""
    if rate is None or math.isnan(rate):
        return "rate-none"
    return f"rate-{max(0, min(10, round(rate * 10)))}"


def needs_review(task: dict[str, Any]) -> bool:
    """The judge's verdict says the task is not fit as it is."""
    judge = (task.get("verdict") or {}).get("judge") or {}
    return judge.get("is_good") is False


def review_first(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks, those needing review first (the order otherwise kept)."""
    return sorted(tasks, key=lambda t: not needs_review(t))


def verdict_text(verdict: dict[str, Any] | None) -> str:
    if not verdict:
        return "-"
    judge = verdict.get("judge") or {}
    counts = verdict.get("summary") or verdict.get("status") or "-"
    if judge.get("is_good") is False:
        issue = judge.get("primary_issue") or "see its analyses"
        return f"{NEEDS_REVIEW} ({judge.get('confidence')}): {issue} · {counts}"
    if judge.get("is_good") is True:
        return f"good ({judge.get('confidence')}) · {counts}"
    if judge.get("error"):
        return f"judge failed: {str(judge['error'])[:200]} · {counts}"
    return str(counts)


@dataclass(frozen=True)
class PhaseBar:
    name: str
    started_at: str | None
    seconds: float | None
    # Where the bar starts and how wide it is, in percent of the trial's span.
    left: float
    width: float


def timeline(timings: dict[str, Any] | None) -> list[PhaseBar]:
    """Harbor's phases of the trial's latest attempt as bars over the trial's span."""
    timings = timings or {}
    spans = [
        (
            label,
            parse_time((timings.get(key) or {}).get("started_at")),
            parse_time((timings.get(key) or {}).get("finished_at")),
        )
        for key, label in PHASES
    ]
    known = [moment for _, start, end in spans for moment in (start, end) if moment]
    whole = timings.get("trial") or {}
    first = parse_time(whole.get("started_at")) or (min(known) if known else None)
    last = parse_time(whole.get("finished_at")) or (max(known) if known else None)
    if first is None or last is None:
        return []
    total = max((last - first).total_seconds(), 1e-3)
    bars = []
    for label, start, end in spans:
        if start is None:
            continue
        stop = end or last
        seconds = (stop - start).total_seconds() if end else None
        left = max(0.0, (start - first).total_seconds() / total * 100)
        width = max(0.5, min(100 - left, (stop - start).total_seconds() / total * 100))
        bars.append(PhaseBar(label, start.isoformat(), seconds, round(left, 2), round(width, 2)))
    return bars


FILTERS = {
    "when": when,
    "duration": duration,
    "percent": percent,
    "usd": usd,
    "number": number,
    "rate_class": rate_class,
    "verdict_text": verdict_text,
}
