"""What a trial's page shows of its latest attempt's output, read within bounds: the verifier's
output and the agent's logs (each file's head and tail), the agent's trajectory step by step,
result.json, and the listing of every file.

All of it was written by the agent or the task's code: hostile. It is returned as text for the
templates to escape, never as markup. Every call blocks (storage reads): run it in a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from oddish.api.trial_files import LOG_SUFFIXES, read_result
from oddish.db.records import RecordNotFound
from oddish.storage import ObjectNotFound, StorageError
from oddish.stored_files import (
    TRAJECTORY_NAME,
    Excerpt,
    FileListing,
    ObjectFolder,
    trajectory_path,
    trial_output,
)

# Files listed on the page (the files route lists up to 10,000).
MAX_LISTED = 2_000
# Logs shown inline, and how much of each: the head says how it started, the tail how it ended.
MAX_INLINE_LOGS = 16
HEAD_BYTES = 16 * 1024
TAIL_BYTES = 48 * 1024
# A trajectory larger than this is not parsed for the page (it stays a download).
MAX_TRAJECTORY_BYTES = 8 * 1024 * 1024
MAX_STEPS = 300
MAX_STEP_TEXT = 4_000
MAX_RESULT_TEXT = 256 * 1024
# The order logs are shown in: what the verifier said, then the agent, then Harbor's own.
LOG_GROUPS = ("verifier/", "agent/", "")


@dataclass
class Step:
    number: str
    source: str
    timestamp: str
    message: str
    reasoning: str
    tool_calls: list[str]
    observations: list[str]


@dataclass
class Trajectory:
    path: str
    steps: list[Step] = field(default_factory=list)
    steps_total: int = 0
    problem: str | None = None


@dataclass
class TrialOutput:
    """What the page shows; ``problem`` says why the output could not be read, if so."""

    listing: FileListing = field(default_factory=FileListing)
    logs: list[Excerpt] = field(default_factory=list)
    logs_not_shown: int = 0
    trajectory: Trajectory | None = None
    result: str | None = None
    result_problem: str | None = None
    problem: str | None = None


def _cut(text: str, limit: int = MAX_STEP_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more ...]"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list):  # content parts: [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") if isinstance(p, dict) else None for p in value]
        if all(isinstance(p, str) for p in parts):
            return _cut("\n".join(str(p) for p in parts))
    return _cut(json.dumps(value, ensure_ascii=False, default=str))


def _step(raw: Any, position: int) -> Step:
    step = raw if isinstance(raw, dict) else {"message": raw}
    raw_calls = step.get("tool_calls")
    calls: list[Any] = raw_calls if isinstance(raw_calls, list) else []
    tool_calls = []
    for call in calls:
        if isinstance(call, dict):
            arguments = call.get("arguments")
            shown = arguments if isinstance(arguments, str) else json.dumps(arguments, default=str)
            tool_calls.append(_cut(f"{call.get('function_name') or '?'}({shown})"))
        else:
            tool_calls.append(_text(call))
    observation = step.get("observation")
    results = observation.get("results") if isinstance(observation, dict) else None
    observations = (
        [_text(r.get("content") if isinstance(r, dict) else r) for r in results]
        if isinstance(results, list)
        else ([_text(observation)] if observation else [])
    )
    return Step(
        number=str(step.get("step_id", position)),
        source=str(step.get("source") or "-"),
        timestamp=str(step.get("timestamp") or ""),
        message=_text(step.get("message")),
        reasoning=_text(step.get("reasoning_content")),
        tool_calls=tool_calls,
        observations=observations,
    )


def read_trajectory(output: ObjectFolder, path: str, size: int) -> Trajectory:
    trajectory = Trajectory(path)
    if size > MAX_TRAJECTORY_BYTES:
        trajectory.problem = f"{size} bytes: too large to show here; download it below"
        return trajectory
    excerpt = output.excerpt(path, size, 0)
    try:
        document = json.loads(excerpt.head)
    except (ValueError, RecursionError) as exc:
        trajectory.problem = f"not valid JSON ({type(exc).__name__})"
        return trajectory
    steps = document.get("steps") if isinstance(document, dict) else None
    if not isinstance(steps, list):
        trajectory.problem = "it has no list of steps"
        return trajectory
    trajectory.steps_total = len(steps)
    trajectory.steps = [_step(s, i + 1) for i, s in enumerate(steps[:MAX_STEPS])]
    return trajectory


def _log_rank(path: str) -> tuple[int, int, str]:
    group = next(i for i, prefix in enumerate(LOG_GROUPS) if path.startswith(prefix))
    return group, path.count("/"), path


def _is_log(path: str) -> bool:
    name = PurePosixPath(path)
    return (
        name.suffix in LOG_SUFFIXES
        and name.name not in (TRAJECTORY_NAME, "result.json", "config.json")
        and (path.startswith(("verifier/", "agent/")) or "/" not in path)
    )


def read_trial_output(trial: dict[str, Any]) -> TrialOutput:
    """The page's view of the trial's latest output (empty, with the reason, when none)."""
    shown = TrialOutput()
    location = trial.get("harbor_trial_dir")
    if not location:
        shown.problem = "no output yet"
        return shown
    try:
        output = trial_output(location)
        shown.listing = output.list_files(MAX_LISTED)
        if not shown.listing.files:
            shown.problem = "no output in storage yet (it is stored once the attempt ends)"
            return shown
        sizes = {f.path: f.size for f in shown.listing.files}
        logs = sorted((p for p in sizes if _is_log(p)), key=_log_rank)
        shown.logs_not_shown = max(0, len(logs) - MAX_INLINE_LOGS)
        for path in logs[:MAX_INLINE_LOGS]:
            try:
                shown.logs.append(output.excerpt(path, HEAD_BYTES, TAIL_BYTES))
            except ObjectNotFound:
                continue
        found = trajectory_path(output)
        if found is not None:
            shown.trajectory = read_trajectory(output, found, sizes.get(found, 0))
    except StorageError as exc:
        shown.problem = f"the storage failed: {exc}"
        return shown
    try:
        text = json.dumps(read_result(trial), indent=2, ensure_ascii=False)
        shown.result = _cut(text, MAX_RESULT_TEXT)
    except RecordNotFound as exc:
        shown.result_problem = str(exc)
    except StorageError as exc:
        shown.result_problem = f"the storage failed: {exc}"
    return shown
