"""Reading a trial's Harbor output (result.json, logs) from the directory of its latest attempt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oddish.db.records import RecordNotFound

MAX_LOG_BYTES = 1_000_000
LOG_SUFFIXES = {".txt", ".log", ".json", ".jsonl", ".out", ".err", ""}


def _trial_dir(trial: dict[str, Any]) -> Path:
    if not trial.get("harbor_trial_dir"):
        raise RecordNotFound(f"trial {trial['id']} has no output yet (status {trial['status']})")
    return Path(trial["harbor_trial_dir"])


def read_result(trial: dict[str, Any]) -> dict[str, Any]:
    path = _trial_dir(trial) / "result.json"
    if not path.is_file():
        raise RecordNotFound(f"trial {trial['id']} has no result.json yet")
    return json.loads(path.read_text())


def read_logs(trial: dict[str, Any]) -> dict[str, str]:
    """Text files of the trial directory by relative path; each cut to its last MAX_LOG_BYTES."""
    root = _trial_dir(trial)
    if not root.is_dir():
        raise RecordNotFound(f"trial {trial['id']}'s output directory is gone")
    logs: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.suffix not in LOG_SUFFIXES:
            continue
        data = path.read_bytes()
        if len(data) > MAX_LOG_BYTES:
            data = b"[... cut ...]\n" + data[-MAX_LOG_BYTES:]
        logs[str(path.relative_to(root))] = data.decode(errors="replace")
    return logs
