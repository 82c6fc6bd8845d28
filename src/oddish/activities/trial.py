"""The ``run_trial`` activity: one real Harbor trial, heartbeating, recorded exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from harbor.models.trial.result import TrialResult
from harbor.trial.trial import Trial
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from oddish.activities.heartbeat import heartbeating
from oddish.activities.pauses import STALL_SEC, stalled_since
from oddish.config import get_settings
from oddish.contracts import RunTrialInput, SlotGrant, TrialOutcome
from oddish.db import attempts, records
from oddish.db.connection import (
    autocommit_connection,
    database_unreachable,
    until_database_answers,
)
from oddish.harbor_config import trial_config
from oddish.outcomes import classify
from oddish.schemas import TrialSpec
from oddish.statuses import TERMINAL_JOB_STATUSES, AttemptStatus, JobStatus
from oddish.storage import trial_output_prefix
from oddish.task_cache import task_dir_for
from oddish.temporal_gateway import grant_slot, workflow_status
from oddish.trial_output import store_attempt_output

log = logging.getLogger(__name__)

# Errors raised before Harbor starts anything: the spec or the task is wrong, and another
# attempt would fail the same way.
CONFIGURATION_ERRORS = {
    "ValueError",
    "ValidationError",
    "FileNotFoundError",
    "ImportError",
    "ModuleNotFoundError",
    "NotImplementedError",
    "TypeError",
}


def touch_interval_sec(heartbeat_timeout_sec: float) -> float:
    """How often a running attempt touches its slot row."""
    return max(0.5, heartbeat_timeout_sec / 4)


def alive_within_sec(heartbeat_timeout_sec: float) -> float:
    """An attempt whose slot row was touched this recently still runs; a dead one goes quiet."""
    return 2 * touch_interval_sec(heartbeat_timeout_sec)


# Set in a worker's trial processes (oddish.worker.trial_processes): the worker's main process.
WORKER_PID_VARIABLE = "ODDISH_TRIAL_PROCESS_PARENT"


def worker_identity() -> str:
    """``host:pid`` of the worker running the attempt: its main process, also when the trial
    runs in one of its trial processes."""
    return f"{socket.gethostname()}:{os.environ.get(WORKER_PID_VARIABLE) or os.getpid()}"


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
    output_location: str,
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
        harbor_trial_dir=output_location,
        harbor_config=harbor_config,
    )
    if result is not None:
        fields.timings = _timings(result)
        n_in, n_cache, n_out, cost = result.compute_token_cost_totals()
        fields.n_input_tokens, fields.n_cache_tokens = n_in, n_cache
        fields.n_output_tokens, fields.cost_usd = n_out, cost
    return fields


async def _touch_slot(
    trial_id: str, attempt_id: int, interval: float, superseded: asyncio.Event
) -> None:
    """Keeps the slot row's heartbeat fresh, for PGQueuer tools and for a later attempt asking
    whether this one still runs; apart from Temporal's heartbeat, so a slow database never makes
    a live trial look dead. Sets ``superseded`` once the attempt is no longer the running one
    (a later attempt took over, or the task was cancelled or reaped). Opening the attempt
    touched the row: the first touch waits its interval."""
    while True:
        await asyncio.sleep(interval)
        try:
            async with autocommit_connection() as conn:
                running = await attempts.touch(conn, trial_id=trial_id, attempt_id=attempt_id)
            if not running:
                superseded.set()
                return
        except Exception as exc:  # a database blip must not kill a running trial
            log.warning("slot heartbeat of trial %s failed: %s", trial_id, exc)


async def _record_lost(attempt_id: int, details: Any) -> None:
    """This attempt stopped without a result; the next one starts without waiting for it."""
    reason = (
        "its worker shut down"
        if details is not None and details.worker_shutdown
        else "it was stopped"
    ) + "; Temporal runs the trial again"
    try:
        async with autocommit_connection() as conn:
            await attempts.mark_lost(
                conn, attempt_id=attempt_id, reason=f"this attempt ended without a result: {reason}"
            )
    except Exception as exc:  # the next attempt then waits until this one looks dead
        log.warning("could not mark attempt %d lost: %s", attempt_id, exc)


async def _record_cancelled(
    trial_id: str, attempt_id: int, fields: records.TrialResultFields
) -> None:
    fields.status, fields.outcome = JobStatus.CANCELLED, "cancelled"
    try:
        async with autocommit_connection() as conn:
            with contextlib.suppress(records.StaleAttempt):
                await attempts.finish(
                    conn,
                    trial_id=trial_id,
                    attempt_id=attempt_id,
                    attempt_status=AttemptStatus.CANCELLED,
                    fields=fields,
                )
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        # The cancelled workflow's own clean-up (cancel_task_records) settles the records.
        log.warning(
            "trial %s cancelled; database unreachable, records left to the workflow: %s",
            trial_id,
            exc,
        )


class RecordedOutcome(TrialOutcome):
    """The outcome of a run recorded before this attempt (by an earlier attempt of the
    activity, or another activity of the trial)."""


def lane_holder(info: activity.Info) -> int:
    """This attempt of a slot lane's activity, as the lane's fence knows it: the time it was
    scheduled, which is later for every attempt (also after an activity reset, which numbers
    attempts from 1 again)."""
    return int(info.current_attempt_scheduled_time.timestamp() * 1_000_000)


class LaneTakenOver(Exception):
    """A later attempt of the slot lane's activity entered the lane (or it was settled): this
    attempt opens no more trials in it."""


async def _start(
    inp: RunTrialInput, info: activity.Info, *, alive_within_sec: float, in_lane: bool
) -> TrialOutcome | attempts.EarlierAttemptRuns | attempts.OpenedAttempt:
    """Open the attempt; or, when this run of the trial already finished, its recorded outcome;
    or, when an earlier attempt is still running (its slot row touched lately), say so. A trial
    handed to a slot lane (``in_lane``) is opened only while this attempt holds the lane."""
    async with autocommit_connection() as conn:
        opened = await attempts.open_attempt(
            conn,
            trial_id=inp.trial_id,
            run_number=inp.run_number,
            temporal_attempt=info.attempt,
            worker=worker_identity(),
            alive_within_sec=alive_within_sec,
            lane=inp.lane,
            lane_holder=lane_holder(info) if in_lane else None,
        )
    if isinstance(opened, attempts.LaneFenced):
        raise LaneTakenOver(f"lane {inp.lane}: a later attempt of its activity took it over")
    if isinstance(opened, attempts.RunFinished):
        return RecordedOutcome.of(inp.trial_id, opened)
    return opened


@activity.defn(name="run_trial")
async def run_trial(inp: RunTrialInput) -> TrialOutcome:
    # Heartbeats go on from the first read until the result is written: neither a slow write nor
    # a database restart must look like a lost worker.
    async with heartbeating() as timeout_sec:
        try:
            info = activity.info()
            if inp.lane is not None:
                return await _run_lane(inp, info, heartbeat_timeout_sec=timeout_sec)
            return await _run_trial(
                inp,
                info,
                heartbeat_timeout_sec=timeout_sec,
                attempt_in_run=info.attempt + inp.attempts_spent,
            )
        except records.StaleAttempt as exc:
            # Temporal has moved on to a newer attempt; whatever this one reports is ignored.
            raise ApplicationError(str(exc), type="StaleAttempt", non_retryable=True) from exc


async def _open_attempt(
    inp: RunTrialInput, info: activity.Info, *, alive_within_sec: float, in_lane: bool = False
) -> TrialOutcome | attempts.OpenedAttempt:
    """Open this attempt, once no earlier one still runs. An earlier attempt that Temporal gave
    up on while its worker lived (Temporal was unreachable for longer than the heartbeat
    timeout, say) goes on running; rather than start the trial over, this one waits for its
    result. A dead attempt stops touching its slot row and is taken over within
    ``alive_within_sec``."""
    waiting_since: float | None = None
    while True:
        # A Postgres restart must not spend the trial's attempts: wait for it to answer.
        opened = await until_database_answers(
            lambda: _start(inp, info, alive_within_sec=alive_within_sec, in_lane=in_lane),
            what=f"trial {inp.trial_id}: opening its attempt",
        )
        if not isinstance(opened, attempts.EarlierAttemptRuns):
            if waiting_since is not None:
                log.info(
                    "trial %s: waited %.1fs for the earlier attempt",
                    inp.trial_id,
                    time.monotonic() - waiting_since,
                )
            return opened
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.warning(
                "trial %s: attempt %d still runs on %s; waiting for its result",
                inp.trial_id,
                opened.number,
                opened.worker,
            )
        await asyncio.sleep(1.0)


# Timeouts Harbor measures on this process's clock that would be recorded as the task's outcome.
TIMED_OUTCOMES = {"AgentTimeoutError": "agent_execution", "VerifierTimeoutError": "verifier"}
WORKER_PAUSED = "WorkerPaused"
# A timeout is not believed when the process did not run for this share of the timed phase.
PAUSED_SHARE = 0.05


def _unless_worker_paused(
    result: TrialResult, error_type: str | None, error_message: str | None, *, stalled: float
) -> tuple[str | None, str | None]:
    """A timeout measured while this process was stopped or frozen is not the agent's (or the
    verifier's): it becomes an infrastructure failure, and the trial runs again."""
    phase_name = TIMED_OUTCOMES.get(error_type or "")
    if phase_name is None or stalled <= STALL_SEC:
        return error_type, error_message
    phase = getattr(result, phase_name, None)
    timed = (
        (phase.finished_at - phase.started_at).total_seconds()
        if phase is not None and phase.started_at and phase.finished_at
        else stalled
    )
    if stalled < PAUSED_SHARE * timed:
        return error_type, error_message
    log.warning(
        "%s discounted: this worker did not run for %.1fs of the attempt", error_type, stalled
    )
    return WORKER_PAUSED, (
        f"{error_type} not believed: the worker did not run for {stalled:.1f}s of the "
        f"{timed:.1f}s {phase_name.replace('_', ' ')} (stopped, frozen or blocked), so the "
        f"timeout may not be the task's; the trial runs again ({error_message})"
    )


async def _harbor_run(config: Any) -> TrialResult:
    harbor_trial = await Trial.create(config)
    return await harbor_trial.run()


async def _workflow_still_runs(info: activity.Info) -> bool:
    """Whether the attempt's workflow runs; True when Temporal cannot be asked (it is down)."""
    if info.workflow_id is None:
        return False
    try:
        status = await asyncio.wait_for(
            workflow_status(
                activity.client(),
                info.workflow_id,
                run_id=info.workflow_run_id,
                rpc_timeout=timedelta(seconds=5),
            ),
            timeout=10,
        )
    except (RPCError, TimeoutError, RuntimeError):
        return True
    return status == WorkflowExecutionStatus.RUNNING


async def _carry_on(info: activity.Info) -> bool:
    """On a cancel: whether the Harbor trial goes on all the same. Only when Temporal gave up on
    this attempt (a heartbeat timeout, or the server no longer knows it) while its workflow still
    runs: the next attempt then waits for this one's result instead of starting over. A cancel
    asked for, a worker shutting down, a terminated workflow stop the trial."""
    details = activity.cancellation_details()
    if details is None or not (details.timed_out or details.not_found):
        return False
    if details.cancel_requested or details.worker_shutdown or details.paused or details.reset:
        return False
    return await _workflow_still_runs(info)


async def _stop(run: asyncio.Future[TrialResult]) -> None:
    """Cancel the Harbor run and wait for its teardown (the sandbox goes)."""
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await run


async def _await_run(
    run: asyncio.Future[TrialResult], superseded: asyncio.Event, info: activity.Info, trial_id: str
) -> TrialResult:
    """The Harbor run's result. A cancel stops it (raising CancelledError) unless the trial
    carries on; a run carrying on stops when its worker shuts down; a superseded run stops at
    once (raising StaleAttempt), so a trial never runs twice at once for long."""
    gone = asyncio.ensure_future(superseded.wait())
    shutdown: asyncio.Future[None] | None = None
    try:
        while True:
            waiters: set[asyncio.Future[Any]] = {run, gone}
            if shutdown is not None:
                waiters.add(shutdown)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                try:
                    carry_on = shutdown is None and await _carry_on(info)
                except asyncio.CancelledError:
                    carry_on = False
                if carry_on:
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
                    shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
                    log.warning(
                        "trial %s: Temporal gave up on this attempt (%s) but its workflow "
                        "runs: the trial carries on and the next attempt takes its result",
                        trial_id,
                        activity.cancellation_details(),
                    )
                    continue
                await _stop(run)
                raise
            if run.done():
                return run.result()
            await _stop(run)
            if superseded.is_set():
                raise records.StaleAttempt(f"a later attempt of trial {trial_id} took over")
            raise asyncio.CancelledError("the worker is shutting down")
    finally:
        gone.cancel()
        if shutdown is not None:
            shutdown.cancel()


async def _run_trial(
    inp: RunTrialInput,
    info: activity.Info,
    *,
    heartbeat_timeout_sec: float,
    attempt_in_run: int,
    uploads: list[asyncio.Future[bool]] | None = None,
    in_lane: bool = False,
) -> TrialOutcome:
    """Run one attempt of the trial and record its result. ``attempt_in_run`` counts it among
    the run's attempts (a retryable failure is retried below ``max_attempts``). The output is
    stored before this returns; or, given ``uploads``, the upload goes there for the caller to
    wait for. ``in_lane``: a trial handed to the slot lane, opened only while this attempt of
    the lane's activity holds the lane (else LaneTakenOver)."""
    touch_interval = touch_interval_sec(heartbeat_timeout_sec)
    started = await _open_attempt(
        inp, info, alive_within_sec=alive_within_sec(heartbeat_timeout_sec), in_lane=in_lane
    )
    if isinstance(started, TrialOutcome):
        return started
    attempt_id = started.attempt_id
    trials_dir = get_settings().harbor_jobs_dir / inp.task_id / inp.trial_id
    trial_name = f"attempt-{started.number}"
    trial_dir = trials_dir / trial_name
    # Where the attempt's output is kept, and recorded: storage, not this machine's disk.
    output_prefix = trial_output_prefix(inp.task_id, inp.trial_id, started.number)
    result: TrialResult | None = None
    error_type: str | None = None
    error_message: str | None = None
    harbor_config: dict[str, Any] = {}
    superseded = asyncio.Event()
    touch = asyncio.ensure_future(_touch_slot(inp.trial_id, attempt_id, touch_interval, superseded))
    # The task's directory stays in use (not evicted from the worker's cache) until the end.
    task_dir = contextlib.AsyncExitStack()
    try:
        try:
            spec = TrialSpec.model_validate(started.spec)
            # Storage failing here (unreachable, the archive missing or corrupt) is an
            # infrastructure failure: recorded, and the attempt retried.
            task_path = await task_dir.enter_async_context(
                task_dir_for(started.task_location, started.archive_sha256)
            )
            config = trial_config(
                spec,
                task_path=task_path,
                trials_dir=trials_dir,
                trial_name=trial_name,
            )
            harbor_config = config.model_dump(mode="json")
            run_started = time.monotonic()
            run = asyncio.ensure_future(_harbor_run(config))
            result = await _await_run(run, superseded, info, inp.trial_id)
            if result.exception_info is not None:
                error_type = result.exception_info.exception_type
                error_message = result.exception_info.exception_message
                error_type, error_message = _unless_worker_paused(
                    result, error_type, error_message, stalled=stalled_since(run_started)
                )
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            # Only a cancel the user asked for settles the trial. A worker shutting down, or an
            # attempt Temporal has already given up on, leaves it to the next attempt, which
            # need not wait for this one.
            if details is not None and details.cancel_requested:
                # One try, not until the storage answers: a cancel must end soon. The record
                # says where the output is: in storage, or still in this machine's directory.
                stored = await asyncio.shield(
                    store_attempt_output(trial_dir, output_prefix, retry=False)
                )
                fields = result_fields(
                    result,
                    error_type="CancelledError",
                    error_message="cancelled",
                    output_location=output_prefix if stored else str(trial_dir),
                    harbor_config=harbor_config,
                )
                await asyncio.shield(_record_cancelled(inp.trial_id, attempt_id, fields))
            else:
                await asyncio.shield(_record_lost(attempt_id, details))
            raise
        except records.StaleAttempt:
            raise
        except Exception as exc:
            error_type, error_message = type(exc).__name__, str(exc)
            if error_type in CONFIGURATION_ERRORS:
                error_message = f"the trial could not be set up: {error_message}"

        fields = result_fields(
            result,
            error_type=error_type,
            error_message=error_message,
            output_location=output_prefix,
            harbor_config=harbor_config,
        )
        retryable = (
            classify(error_type, fields.rewards).retryable
            and error_type not in CONFIGURATION_ERRORS
        )
        # The result is recorded while the output is stored, neither waiting for the other: a
        # storage outage never holds up or loses a result (nor the slot a finished trial gives
        # back). Until the upload ends the output is on this machine's disk, and the activity
        # (still heartbeating) does not report back: the next attempt, or the trial's analysis,
        # starts once it is stored.
        upload = asyncio.ensure_future(store_attempt_output(trial_dir, output_prefix))
        try:
            # The result must not be lost to a Postgres restart: wait for it to answer.
            outcome = await until_database_answers(
                lambda: _record_result(
                    inp,
                    attempt_id,
                    fields,
                    retry=retryable and attempt_in_run < inp.max_attempts,
                    retryable=retryable,
                    error_type=error_type,
                    error_message=error_message,
                ),
                what=f"trial {inp.trial_id}: recording its result",
            )
        except (ApplicationError, records.StaleAttempt):
            # Recorded for a retry (or superseded): the attempt's output is kept all the same.
            await upload
            raise
        except BaseException:
            # Stopped (the worker shuts down): what the upload left on disk is swept up later.
            upload.cancel()
            raise
        if uploads is None:
            await _store_output_handing_over(upload, outcome.next_grant, info)
        else:
            uploads.append(upload)
        return outcome
    finally:
        touch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await touch
        await task_dir.aclose()


# A slot lane runs at most this many trials after its first: its result (an outcome per trial)
# stays small, the workflow learns its trials' outcomes every so often, and a lane's slot comes
# back to Temporal's dispatch (to whichever worker asks first) now and then, so that workers
# started later, or less loaded, get their share.
LANE_MAX_TRIALS = 20


def _lane_goes_on(info: activity.Info, ran: int, elapsed_sec: float, longest_sec: float) -> bool:
    """Whether the lane takes the next trial handed its slot. Not past its bound; not once
    Temporal gave up on this attempt (it carried its trial on) or the worker shuts down (the
    workflow then starts the trial elsewhere); and not when a trial as long as its longest yet
    would take it past half its start-to-close timeout, which bounds the whole lane."""
    if ran >= LANE_MAX_TRIALS:
        return False
    if activity.cancellation_details() is not None or activity.is_worker_shutdown():
        return False
    timeout = info.start_to_close_timeout
    return timeout is None or elapsed_sec + longest_sec <= timeout.total_seconds() / 2


async def _enter_lane(inp: RunTrialInput, lane: str, info: activity.Info) -> bool:
    """Enter the lane as this attempt of its activity (before reading its trials or opening
    one); whether no later attempt has."""

    async def enter() -> bool:
        async with autocommit_connection() as conn:
            return await attempts.enter_lane(
                conn, lane=lane, trial_id=inp.trial_id, holder=lane_holder(info)
            )

    return await until_database_answers(enter, what=f"lane {lane}: entering it")


def lane_trial_outcome(trial: attempts.LaneTrial) -> TrialOutcome:
    """A finished trial of a lane as the lane reports it (its errors stay in the records)."""
    return TrialOutcome(
        trial.trial_id, trial.status, trial.outcome, trial.reward, run_number=trial.run_number
    )


def lane_trial_grant(trial: attempts.LaneTrial) -> SlotGrant | None:
    """The grant to go on with a lane's unfinished trial, which holds its slot, with the
    attempts of its run spent so far; None for a finished one or one holding no slot."""
    if trial.status in TERMINAL_JOB_STATUSES or trial.slot is None:
        return None
    return SlotGrant(trial.trial_id, trial.slot, trial.run_number, attempts_spent=trial.attempts)


async def _resume_lane(inp: RunTrialInput, lane: str, ran: list[TrialOutcome]) -> SlotGrant | None:
    """After an attempt of the lane was lost (its worker died): the trials it ran, added to
    ``ran`` from the records, and the grant of the one it was running, to go on with."""

    async def read() -> list[attempts.LaneTrial]:
        async with autocommit_connection() as conn:
            return await attempts.lane_trials(conn, first_trial_id=inp.trial_id, lane=lane)

    resumed: SlotGrant | None = None
    for trial in await until_database_answers(read, what=f"lane {lane}: reading its trials"):
        if trial.status in TERMINAL_JOB_STATUSES:
            ran.append(lane_trial_outcome(trial))
        elif resumed is None:
            resumed = lane_trial_grant(trial)
    return resumed


async def _run_lane(
    inp: RunTrialInput, info: activity.Info, *, heartbeat_timeout_sec: float
) -> TrialOutcome:
    """A slot lane: the trial, then each trial its slot is handed to (the next in line of the
    same workflow), in this activity, with no round trip through the workflow between them.
    Returns the first trial's outcome with the others' in ``lane``, and the grant of a trial
    handed the slot that the lane did not run. Each trial counts its own attempts: one whose
    attempt fails, to be tried again, goes on in an activity of its own.

    A later attempt of the activity (this one's worker died, or Temporal gave up on it) enters
    the lane before it reads which trials the lane ran: this attempt then opens no trial in it,
    and a grant it was handed is signalled to the workflow by the dispatchers."""
    assert inp.lane is not None
    uploads: list[asyncio.Future[bool]] = []
    try:
        began = time.monotonic()
        first = await _run_trial(
            inp,
            info,
            heartbeat_timeout_sec=heartbeat_timeout_sec,
            attempt_in_run=info.attempt + inp.attempts_spent,
            uploads=uploads,
        )
        longest = time.monotonic() - began
        grant, first.next_grant = first.next_grant, None
        # An earlier attempt of this activity may have run the lane on: its first trial's result
        # was recorded before this attempt.
        resumable = grant is None and (info.attempt > 1 or isinstance(first, RecordedOutcome))
        holds_lane = (grant is None and not resumable) or await _enter_lane(inp, inp.lane, info)
        if holds_lane and resumable:
            grant = await _resume_lane(inp, inp.lane, first.lane)
        while (
            holds_lane
            and grant is not None
            and _lane_goes_on(info, len(first.lane), time.monotonic() - began, longest)
        ):
            attempt_in_run = grant.attempts_spent + 1
            handed = RunTrialInput(
                inp.task_id,
                grant.trial_id,
                run_number=grant.run_number,
                max_attempts=inp.max_attempts,
                hand_over=True,
                lane=inp.lane,
            )
            started = time.monotonic()
            try:
                outcome = await _run_trial(
                    handed,
                    info,
                    heartbeat_timeout_sec=heartbeat_timeout_sec,
                    attempt_in_run=attempt_in_run,
                    uploads=uploads,
                    in_lane=True,
                )
            except LaneTakenOver:
                log.warning("lane %s: taken over by a later attempt; it stops", inp.lane)
                break
            except ApplicationError as err:
                if err.non_retryable:
                    raise
                # Recorded to be tried again, its slot kept: an activity of its own retries it.
                grant = dataclasses.replace(grant, attempts_spent=attempt_in_run)
                break
            longest = max(longest, time.monotonic() - started)
            grant, outcome.next_grant = outcome.next_grant, None
            outcome.run_number = handed.run_number
            outcome.error_type = outcome.error_message = None
            first.lane.append(outcome)
    except BaseException:
        details = activity.cancellation_details()
        if activity.is_worker_shutdown() or (details is not None and details.cancel_requested):
            # Stopped, and a cancel must end soon: what the earlier trials' uploads left on disk
            # is swept up later.
            for upload in uploads:
                upload.cancel()
        else:
            # Their trials are recorded finished: their outputs are stored before their
            # analyses may read them.
            await asyncio.shield(asyncio.gather(*uploads, return_exceptions=True))
        raise
    first.next_grant = grant
    # A trial handed back to be retried waits for the outputs (a retry waits anyway): told by a
    # signal, it could start before a lost lane's next attempt has looked for it.
    signalled = grant if grant is not None and not grant.attempts_spent else None
    await _store_output_handing_over(_all_stored(uploads), signalled, info)
    return first


async def _all_stored(uploads: list[asyncio.Future[bool]]) -> bool:
    return all(await asyncio.gather(*uploads))


# A slot handed over reaches the workflow with the trial's result, once the output is stored;
# an upload taking longer than this has the workflow signalled the grant instead, so the next
# trial waits for no upload (on a loaded worker storing even a small output takes 0.1-0.3 s).
HAND_OVER_WAIT_SEC = 0.05
# The holder a handed-over slot is recorded under (PGQueuer's queue_manager_id): this process.
HAND_OVER_MANAGER_ID = uuid.uuid4()


async def _store_output_handing_over(
    upload: Awaitable[bool], grant: SlotGrant | None, info: activity.Info
) -> None:
    if grant is not None and info.workflow_id is not None:
        upload = asyncio.ensure_future(upload)
        done, _ = await asyncio.wait({upload}, timeout=HAND_OVER_WAIT_SEC)
        if not done:
            try:
                await grant_slot(activity.client(), info.workflow_id, grant)
            except Exception as exc:  # the dispatcher's re-signal loop tells it instead
                log.warning("could not signal %s its grant: %s", info.workflow_id, exc)
    await upload


async def _record_result(
    inp: RunTrialInput,
    attempt_id: int,
    fields: records.TrialResultFields,
    *,
    retry: bool,
    retryable: bool,
    error_type: str | None,
    error_message: str | None,
) -> TrialOutcome:
    """Record the attempt's result; with ``retry``, as a failure to try again (raising the
    ApplicationError that has Temporal retry it)."""
    info = activity.info()
    hand_over = (
        attempts.HandOver(
            info.workflow_id, get_settings().default_model_concurrency, HAND_OVER_MANAGER_ID
        )
        if inp.hand_over and info.workflow_id is not None
        else None
    )
    async with autocommit_connection() as conn:
        if retry:
            await attempts.record_retryable(
                conn, trial_id=inp.trial_id, attempt_id=attempt_id, fields=fields
            )
            raise ApplicationError(f"{error_type}: {error_message}", type=error_type)
        if fields.status == JobStatus.SUCCESS:
            attempt_status = AttemptStatus.SUCCESS
        else:
            attempt_status = AttemptStatus.INFRA_ERROR if retryable else AttemptStatus.FAILED
        handed = await attempts.finish(
            conn,
            trial_id=inp.trial_id,
            attempt_id=attempt_id,
            attempt_status=attempt_status,
            fields=fields,
            hand_over=hand_over,
        )
    outcome = TrialOutcome.of(inp.trial_id, fields)
    if handed is not None:
        outcome.next_grant = SlotGrant(handed.trial_id, handed.slot, handed.run_number)
    return outcome
