"""Every side effect the workflows need; registered on each worker."""

from collections.abc import Callable
from typing import Any

from oddish.activities.analysis import analyze_trial
from oddish.activities.records import (
    begin_task,
    cancel_task_records,
    fail_trial,
    record_task_status,
    request_slots,
)
from oddish.activities.trial import run_trial
from oddish.activities.verdict import decide_verdict

ALL_ACTIVITIES: list[Callable[..., Any]] = [
    analyze_trial,
    begin_task,
    cancel_task_records,
    decide_verdict,
    fail_trial,
    record_task_status,
    request_slots,
    run_trial,
]
# Served on the judge's task queue too (workflows started before it existed ran them on the
# main one): they may wait long for a slot of the judge model's key.
JUDGE_ACTIVITIES: list[Callable[..., Any]] = [analyze_trial, decide_verdict]
