"""The ``run_trial`` activity: one real Harbor trial, heartbeating, recorded exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harbor.models.trial.result import TrialResult
from harbor.trial.trial import Trial
from temporalio import activity
from temporalio.exceptions import ApplicationError

from oddish.config import get_settings
from oddish.contracts import RunTrialInput, TrialOutcome
from oddish.db import records, slots
from oddish.db.connection import database_unreachable, get_session, until_database_answers
from oddish.harbor_config import trial_config
from oddish.outcomes import classify
from oddish.schemas import TrialSpec
from oddish.statuses import AttemptStatus, JobStatus

log = logging.getLogger(__name__)

# Errors raised before Harbor starts anything: the spec or the task is wrong, and another
# attempt would fail the same way.
CONFIGURATION_ERRORS = {"ValueError", "ValidationError", "FileNotFoundError", "ImportError",
                        "ModuleNotFoundError", "NotImplementedError", "TypeError"}


# A cancel reaches a running trial only in the answer to one of its heartbeats, so heartbeats go
# out at least this often (the worker's heartbeat throttle is set to match): a cancelled trial's
# sandbox is torn down within a few seconds, not within most of the heartbeat timeout.
MAX_HEARTBEAT_INTERVAL_SEC = 2.0


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _outcome(trial_id: str, fields: records.TrialResultFields) -> TrialOutcome:
    return TrialOutcome(
        trial_id=trial_id,
        status=fields.status,
        outcome=fields.outcome,
        reward=fields.reward,
        error_type=fields.error_type,
        error_message=fields.error_message,
    )


def _timings(result: TrialResult) -> dict[str, Any]:
    phases = {
        "environment_setup": result.environment_setup,
        "agent_setup": result.agent_setup,
        "agent_execution": result.agent_execution,
        "verifier": result.verifier,
    }
    timings: dict[str, Any] = {
        name: {
            "started_at": t.started_at.isoformat() if t.started_at else None,
            "finished_at": t.finished_at.isoformat() if t.finished_at else None,
        }
        for name, t in phases.items()
        if t is not None
    }
    if result.started_at:
        timings["trial"] = {
            "started_at": result.started_at.isoformat(),
            "finished_at": result.finished_at.isoformat() if result.finished_at else None,
        }
    return timings


def result_fields(
    result: TrialResult | None,
    *,
    error_type: str | None,
    error_message: str | None,
    trial_dir: Path,
    harbor_config: dict[str, Any],
) -> records.TrialResultFields:
    rewards = None
    if result is not None and result.verifier_result is not None:
        rewards = dict(result.verifier_result.rewards or {}) or None
    verdict = classify(error_type, rewards)
    fields = records.TrialResultFields(
        status=verdict.status,
        outcome=verdict.outcome,
        reward=verdict.reward,
        rewards=rewards,
        error_type=error_type,
        error_message=error_message,
        harbor_trial_dir=str(trial_dir),
        harbor_config=harbor_config,
    )
    if result is not None:
        fields.timings = _timings(result)
        n_in, n_cache, n_out, cost = result.compute_token_cost_totals()
        fields.n_input_tokens, fields.n_cache_tokens = n_in, n_cache
        fields.n_output_tokens, fields.cost_usd = n_out, cost
    return fields


async def _heartbeat(interval: float) -> None:
    """Heartbeats from a loop of its own, so a long sandbox call never looks like a dead worker."""
    while True:
        activity.heartbeat()
        await asyncio.sleep(interval)


async def _touch_slot(trial_id: str, interval: float) -> None:
    """Keeps the slot row's heartbeat fresh for PGQueuer tools; apart from Temporal's heartbeat,
    so a slow database never makes a live trial look dead."""
    while True:
        try:
            async with get_session() as session:
                await slots.touch(await session.connection(), trial_id)
                await session.commit()
        except Exception as exc:  # a database blip must not kill a running trial
            log.warning("slot heartbeat of trial %s failed: %s", trial_id, exc)
        await asyncio.sleep(interval)


async def _record_cancelled(trial_id: str, attempt_id: int, fields: records.TrialResultFields) -> None:
    fields.status, fields.outcome = JobStatus.CANCELLED, "cancelled"
    try:
        async with get_session() as session:
            try:
                await records.finish_trial(
                    session, trial_id=trial_id, attempt_id=attempt_id,
                    attempt_status=AttemptStatus.CANCELLED, fields=fields,
                )
            except records.StaleAttempt:
                return
            await session.commit()
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        # The cancelled workflow's own clean-up (cancel_task_records) settles the records.
        log.warning("trial %s cancelled; database unreachable, records left to the workflow: %s",
                    trial_id, exc)


@dataclass(frozen=True)
class _Started:
    spec: TrialSpec
    task_path: Path
    attempt_id: int
    attempt_number: int


async def _start(inp: RunTrialInput, info: activity.Info) -> TrialOutcome | _Started:
    """Open the attempt; or, when this run of the trial already finished, its recorded outcome."""
    async with get_session() as session:
        trial = await records.get_trial(session, inp.trial_id)
        if trial.run_number == inp.run_number and trial.status in records.TERMINAL_TRIAL_STATUSES:
            # This run already finished; its completion just never reached Temporal. A slot
            # granted again (a re-run of a finished workflow) goes straight back.
            await slots.release(await session.connection(), trial_ids=[trial.id],
                                log_status="successful")
            await session.commit()
            return TrialOutcome(
                trial_id=trial.id, status=trial.status, outcome=trial.outcome,
                reward=trial.reward, error_type=trial.error_type,
                error_message=trial.error_message,
            )
        spec = TrialSpec.model_validate(trial.spec)
        task_path = Path(trial.task.task_path)
        attempt = await records.start_attempt(
            session, trial_id=inp.trial_id, run_number=inp.run_number,
            temporal_attempt=info.attempt, worker=worker_identity(),
        )
        started = _Started(spec, task_path, attempt.id, attempt.number)
        await session.commit()
    return started


@activity.defn(name="run_trial")
async def run_trial(inp: RunTrialInput) -> TrialOutcome:
    info = activity.info()
    timeout_sec = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 30.0
    heartbeat_interval = max(0.2, min(MAX_HEARTBEAT_INTERVAL_SEC, timeout_sec / 3))
    # Heartbeats go on from the first read until the result is written: neither a slow write nor
    # a database restart must look like a lost worker.
    heartbeat = asyncio.ensure_future(_heartbeat(heartbeat_interval))
    try:
        return await _run_trial(inp, info, touch_interval=max(1.0, timeout_sec / 3))
    except records.StaleAttempt as exc:
        # Temporal has moved on to a newer attempt; whatever this one reports is ignored.
        raise ApplicationError(str(exc), type="StaleAttempt", non_retryable=True) from exc
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


async def _run_trial(inp: RunTrialInput, info: activity.Info, *, touch_interval: float) -> TrialOutcome:
    # A Postgres restart must not spend the trial's attempts (before it starts) nor lose its
    # result (after it ran, maybe for hours): both steps wait for the database to answer.
    started = await until_database_answers(lambda: _start(inp, info),
                                           what=f"trial {inp.trial_id}: opening its attempt")
    if isinstance(started, TrialOutcome):
        return started
    attempt_id = started.attempt_id
    trials_dir = get_settings().harbor_jobs_dir / inp.task_id / inp.trial_id
    trial_name = f"attempt-{started.attempt_number}"
    trial_dir = trials_dir / trial_name
    result: TrialResult | None = None
    error_type: str | None = None
    error_message: str | None = None
    harbor_config: dict[str, Any] = {}
    # The slot row only needs to stay well inside the slot lease.
    touch = asyncio.ensure_future(_touch_slot(inp.trial_id, touch_interval))
    try:
        try:
            config = trial_config(started.spec, task_path=started.task_path,
                                  trials_dir=trials_dir, trial_name=trial_name)
            harbor_config = config.model_dump(mode="json")
            harbor_trial = await Trial.create(config)
            result = await harbor_trial.run()
            if result.exception_info is not None:
                error_type = result.exception_info.exception_type
                error_message = result.exception_info.exception_message
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            # Only a cancel the user asked for settles the trial. A worker shutting down, or an
            # attempt Temporal has already given up on, leaves it to the next attempt.
            if details is not None and details.cancel_requested:
                fields = result_fields(result, error_type="CancelledError",
                                       error_message="cancelled", trial_dir=trial_dir,
                                       harbor_config=harbor_config)
                await asyncio.shield(_record_cancelled(inp.trial_id, attempt_id, fields))
            raise
        except Exception as exc:
            error_type, error_message = type(exc).__name__, str(exc)
            if error_type in CONFIGURATION_ERRORS:
                error_message = f"the trial could not be set up: {error_message}"

        fields = result_fields(result, error_type=error_type, error_message=error_message,
                               trial_dir=trial_dir, harbor_config=harbor_config)
        retryable = (classify(error_type, fields.rewards).retryable
                     and error_type not in CONFIGURATION_ERRORS)
        return await until_database_answers(
            lambda: _record_result(inp, attempt_id, fields, retryable=retryable,
                                   error_type=error_type, error_message=error_message),
            what=f"trial {inp.trial_id}: recording its result",
        )
    finally:
        touch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await touch


async def _record_result(
    inp: RunTrialInput, attempt_id: int, fields: records.TrialResultFields, *,
    retryable: bool, error_type: str | None, error_message: str | None,
) -> TrialOutcome:
    async with get_session() as session:
        if retryable and activity.info().attempt < inp.max_attempts:
            await records.record_retryable_attempt(
                session, trial_id=inp.trial_id, attempt_id=attempt_id, fields=fields
            )
            await session.commit()
            raise ApplicationError(f"{error_type}: {error_message}", type=error_type)
        attempt_status = {
            JobStatus.SUCCESS: AttemptStatus.SUCCESS,
        }.get(fields.status, AttemptStatus.INFRA_ERROR if retryable else AttemptStatus.FAILED)
        await records.finish_trial(
            session, trial_id=inp.trial_id, attempt_id=attempt_id,
            attempt_status=attempt_status, fields=fields,
        )
        await session.commit()
    return _outcome(inp.trial_id, fields)
