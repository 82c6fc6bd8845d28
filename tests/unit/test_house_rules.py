"""Rules the layer contracts cannot express: Temporal client calls have one home, statuses and
trial result fields one definition each."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from temporalio import workflow

from oddish.db.models import TrialAttemptModel, TrialModel
from oddish.db.records import (
    ATTEMPT_RESULT_FIELDS,
    KEPT_WHEN_UNREPORTED,
    TrialResultFields,
)
from oddish.workflows.task_workflow import TaskWorkflow

SRC = Path(__file__).resolve().parents[2] / "src" / "oddish"
GATEWAY = SRC / "temporal_gateway.py"
# Calls on a Temporal client that only the gateway makes (an activity's own heartbeat and the
# worker's registration are not client calls on workflows).
CLIENT_CALLS = re.compile(
    r"\.(get_workflow_handle|get_workflow_handle_for|start_workflow|execute_workflow|"
    r"execute_update|start_update|signal_workflow|list_workflows|fetch_history)\("
)


def test_temporal_client_calls_live_in_the_gateway() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path != GATEWAY
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if CLIENT_CALLS.search(line)
    ]
    assert not offenders, "call Temporal through oddish.temporal_gateway:\n" + "\n".join(offenders)


def test_signals_and_updates_are_sent_by_typed_reference() -> None:
    source = GATEWAY.read_text()
    assert "TaskWorkflow.slot_granted" in source and "TaskWorkflow.retry_trials" in source
    assert not re.search(r"\.(signal|execute_update)\(\s*\"", source), "no bare-string names"
    # The names the workflow registers are the ones running workflows' histories carry.
    definition = workflow._Definition.must_from_class(TaskWorkflow)
    assert (definition.name, set(definition.signals), set(definition.updates)) == (
        "TaskWorkflow",
        {"slot_granted"},
        {"retry_trials"},
    )


def test_status_sets_are_defined_once() -> None:
    definition = re.compile(r"^\s*\w*STATUSES\w*\s*(:[^=]*)?=", re.M)
    defined_in = [
        path.relative_to(SRC).as_posix()
        for path in sorted(SRC.rglob("*.py"))
        if definition.search(path.read_text())
    ]
    assert defined_in == ["statuses.py"]


def test_trial_result_fields_are_columns_of_the_trial_and_attempt_rows() -> None:
    fields = {f.name for f in dataclasses.fields(TrialResultFields)}
    assert fields <= set(TrialModel.__table__.columns.keys())
    assert set(ATTEMPT_RESULT_FIELDS) <= fields
    assert set(ATTEMPT_RESULT_FIELDS) <= set(TrialAttemptModel.__table__.columns.keys())
    assert fields >= KEPT_WHEN_UNREPORTED


def test_an_attempt_that_reported_less_keeps_what_the_trial_had() -> None:
    values = TrialResultFields(status="failed", outcome="infrastructure_error").trial_values()
    # The outcome is always written, even when empty: a stale reward must not survive a re-run.
    assert values["reward"] is None and values["error_type"] is None
    assert not set(values) & KEPT_WHEN_UNREPORTED
    full = TrialResultFields(status="success", outcome="success", reward=1.0, cost_usd=0.5)
    assert full.trial_values()["cost_usd"] == 0.5


def test_test_files_have_names_of_their_own() -> None:
    """pytest imports test modules by their file name: two alike in different tiers collide."""
    names = [path.name for path in (SRC.parents[1] / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
