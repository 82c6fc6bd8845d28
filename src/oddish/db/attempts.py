"""A trial attempt's records as the worker running it keeps them: opened, touched while it runs,
finished.

Every trial makes these statements, so each step is as few round trips as it can be: plain
statements, one to open an attempt, one for each touch and one for the result. Through the ORM
(an identity map, a unit of work, a query per relationship) the same steps cost a trial process
about as much CPU as Harbor's own code for a short trial.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from oddish.db import slots
from oddish.db.records import (
    RecordNotFound,
    StaleAttempt,
    TrialResultFields,
    now,
    slot_log_status,
)
from oddish.statuses import TERMINAL_JOB_STATUSES, AttemptStatus


@dataclass(frozen=True)
class RunFinished:
    """This run of the trial already has its result (its completion never reached Temporal)."""

    status: str
    outcome: str | None
    reward: float | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True)
class EarlierAttemptRuns:
    """An earlier attempt of the trial still runs: its slot row was touched lately."""

    number: int
    worker: str | None


@dataclass(frozen=True)
class LaneFenced:
    """The slot lane was entered by a later attempt of its activity (or settled): this one may
    open no more trials in it."""


@dataclass(frozen=True)
class OpenedAttempt:
    attempt_id: int
    number: int
    spec: dict[str, Any]
    # The task's location (its archive's storage key, or a legacy local path) and sha256.
    task_location: str
    archive_sha256: str | None


# One statement, so that opening an attempt costs one round trip (a transaction would cost three):
# the trial is locked (an attempt finishing meanwhile is then seen finished, not started over),
# read with its task's archive, its latest running attempt and whether that one's slot row was
# touched lately; and only when this run has no result yet and no earlier attempt still runs,
# the attempt is opened. An earlier attempt still marked running was lost with its worker. The
# slot row is touched, so the attempt's first touch can wait its interval, and marked
# signalled: a slot handed over by the trial before (``finish``) needs no signal once its trial
# runs. An attempt another opening committed while this one waited for the lock is not in this
# statement's snapshot: its number is taken again (a unique violation), and the statement is
# run once more, seeing it.
_OPEN_ATTEMPT = text("""
WITH fence AS (
    SELECT FROM slot_lanes
    WHERE id = CAST(:lane AS varchar) AND holder = CAST(:lane_holder AS bigint)
    FOR SHARE
),
trial AS (
    SELECT t.run_number, t.status, t.outcome, t.reward, t.error_type, t.error_message, t.spec,
           k.task_path, k.archive_sha256, r.number AS running_number, r.worker AS running_worker,
           EXISTS (
               SELECT FROM pgqueuer p
               WHERE p.dedupe_key = CAST(:dedupe_key AS text) AND p.status = 'picked'
                 AND p.heartbeat > now() - make_interval(secs => CAST(:alive_sec AS float8))
           ) AS heard,
           (CAST(:lane_holder AS bigint) IS NULL OR EXISTS (SELECT FROM fence)) AS unfenced
    FROM trials t
    JOIN tasks k ON k.id = t.task_id
    LEFT JOIN LATERAL (
        SELECT a.number, a.worker FROM trial_attempts a
        WHERE a.trial_id = t.id AND a.status = 'running'
        ORDER BY a.number DESC LIMIT 1
    ) r ON true
    WHERE t.id = CAST(:trial_id AS varchar)
    FOR UPDATE OF t
),
go AS (
    SELECT FROM trial
    WHERE unfenced AND NOT (run_number = CAST(:run_number AS integer)
               AND status = ANY(CAST(:terminal AS varchar[])))
      AND NOT (running_number IS NOT NULL AND heard)
),
lost AS (
    UPDATE trial_attempts
    SET status = 'lost', finished_at = CAST(:now AS timestamptz),
        error_type = COALESCE(error_type, 'WorkerLost'),
        error_message = COALESCE(error_message, CAST(:lost_message AS text))
    WHERE trial_id = CAST(:trial_id AS varchar) AND status = 'running' AND EXISTS (SELECT FROM go)
),
started AS (
    UPDATE trials
    SET status = 'running', started_at = COALESCE(started_at, CAST(:now AS timestamptz))
    WHERE id = CAST(:trial_id AS varchar) AND EXISTS (SELECT FROM go)
),
touched AS (
    UPDATE pgqueuer
    SET heartbeat = now(),
        headers = CASE WHEN headers ? 'signalled' THEN headers
                       ELSE headers || '{"signalled": true}'::jsonb END
    WHERE dedupe_key = CAST(:dedupe_key AS text) AND status = 'picked'
      AND EXISTS (SELECT FROM go)
),
opened AS (
    INSERT INTO trial_attempts (
        trial_id, number, run_number, temporal_attempt, worker, lane, status, started_at
    )
    SELECT CAST(:trial_id AS varchar), COALESCE(max(number), 0) + 1,
           CAST(:run_number AS integer), CAST(:temporal_attempt AS integer),
           CAST(:worker AS varchar), CAST(:lane AS varchar), 'running',
           CAST(:now AS timestamptz)
    FROM trial_attempts WHERE trial_id = CAST(:trial_id AS varchar)
    HAVING EXISTS (SELECT FROM go)
    RETURNING id, number
)
SELECT trial.*, opened.id AS attempt_id, opened.number AS attempt_number
FROM trial LEFT JOIN opened ON true
""")
LOST_MESSAGE = (
    "this attempt ended without a result (its worker stopped or was lost); "
    "Temporal ran the trial again"
)


async def open_attempt(
    conn: AsyncConnection,
    *,
    trial_id: str,
    run_number: int,
    temporal_attempt: int,
    worker: str,
    alive_within_sec: float,
    lane: str | None = None,
    lane_holder: int | None = None,
) -> OpenedAttempt | RunFinished | EarlierAttemptRuns | LaneFenced:
    """Open a new attempt of the trial (in the slot lane ``lane``, if any). One statement: run
    it in autocommit. With ``lane_holder``, only while the attempt of the lane's activity it
    names holds the lane (``enter_lane``), else LaneFenced.

    Or, when this run already finished, its result (and the slot granted again goes straight
    back); or, when an earlier attempt still runs, which one. Raises RecordNotFound for a
    trial that is not recorded.
    """
    dedupe_key = slots.dedupe_key(trial_id)
    params = {
        "trial_id": trial_id,
        "dedupe_key": dedupe_key,
        "alive_sec": alive_within_sec,
        "run_number": run_number,
        "terminal": sorted(TERMINAL_JOB_STATUSES),
        "temporal_attempt": temporal_attempt,
        "worker": worker,
        "lane": lane,
        "lane_holder": lane_holder,
        "now": now(),
        "lost_message": LOST_MESSAGE,
    }
    try:
        row = (await conn.execute(_OPEN_ATTEMPT, params)).one_or_none()
    except IntegrityError:
        row = (await conn.execute(_OPEN_ATTEMPT, params)).one_or_none()
    if row is None:
        raise RecordNotFound(f"no trial {trial_id!r}")
    if not row.unfenced:
        return LaneFenced()
    if row.attempt_id is not None:
        return OpenedAttempt(
            row.attempt_id, row.attempt_number, row.spec, row.task_path, row.archive_sha256
        )
    if row.run_number == run_number and row.status in TERMINAL_JOB_STATUSES:
        await slots.release(conn, trial_ids=[trial_id], log_status="successful")
        return RunFinished(row.status, row.outcome, row.reward, row.error_type, row.error_message)
    return EarlierAttemptRuns(row.running_number, row.running_worker)


# The lane's row is locked (an UPDATE), so an opening of an earlier attempt that holds it
# (FOR SHARE) is committed first, and seen by whatever reads the lane next.
_ENTER_LANE = text("""
INSERT INTO slot_lanes (id, task_id, holder)
SELECT CAST(:lane AS varchar), task_id, CAST(:holder AS bigint)
FROM trials WHERE id = CAST(:trial_id AS varchar)
ON CONFLICT (id) DO UPDATE SET holder = GREATEST(slot_lanes.holder, EXCLUDED.holder)
RETURNING holder
""")
# Entered by this to settle a lane: no attempt of its activity opens a trial in it after.
SETTLED_LANE = 2**63 - 1


async def enter_lane(conn: AsyncConnection, *, lane: str, trial_id: str, holder: int) -> bool:
    """Enter the slot lane begun by ``trial_id`` as the attempt of its activity named ``holder``
    (a number later attempts exceed; before reading the lane's trials): an earlier attempt opens
    no trial in it from then on. Whether this one still holds it. One statement: run it in
    autocommit."""
    entered = await conn.execute(
        _ENTER_LANE, {"lane": lane, "trial_id": trial_id, "holder": holder}
    )
    return entered.scalar_one() == holder


@dataclass(frozen=True)
class LaneTrial:
    """A trial a slot lane ran (or runs), after the trial it began with, in the run the lane
    ran."""

    trial_id: str
    run_number: int
    status: str
    outcome: str | None
    reward: float | None
    # Attempts of the lane's run of the trial, in the lane or not.
    attempts: int
    # The slot the trial holds, while it holds one.
    slot: int | None


# The lane's trials in the order it took them: a lane's attempts are found by its trials, which
# are of one task (an index), and by their lane. A trial retried since (its run moved on) is its
# workflow's again, not the lane's.
_LANE_TRIALS = text("""
WITH lane AS (
    SELECT a.trial_id, max(a.run_number) AS run_number, min(a.id) AS first_id
    FROM trial_attempts a
    JOIN trials t ON t.id = a.trial_id
    WHERE t.task_id = (SELECT task_id FROM trials WHERE id = CAST(:first_trial_id AS varchar))
      AND a.lane = CAST(:lane AS varchar) AND a.trial_id <> CAST(:first_trial_id AS varchar)
    GROUP BY a.trial_id
)
SELECT lane.trial_id, lane.run_number, t.status, t.outcome, t.reward, p.slot,
       (SELECT count(*) FROM trial_attempts a
        WHERE a.trial_id = lane.trial_id AND a.run_number = lane.run_number) AS attempts
FROM lane
JOIN trials t ON t.id = lane.trial_id AND t.run_number = lane.run_number
LEFT JOIN pgqueuer p
    ON p.dedupe_key = CAST(:dedupe_prefix AS text) || lane.trial_id AND p.status = 'picked'
ORDER BY lane.first_id
""")


async def lane_trials(conn: AsyncConnection, *, first_trial_id: str, lane: str) -> list[LaneTrial]:
    """The trials the slot lane ``lane``, begun by ``first_trial_id``, ran after it (but those
    retried since)."""
    parameters = {
        "first_trial_id": first_trial_id,
        "lane": lane,
        "dedupe_prefix": slots.dedupe_key(""),
    }
    rows = await conn.execute(_LANE_TRIALS, parameters)
    return [
        LaneTrial(
            r.trial_id,
            r.run_number,
            r.status,
            r.outcome,
            r.reward,
            r.attempts,
            r.slot,
        )
        for r in rows
    ]


_TOUCH = text("""
WITH touched AS (
    UPDATE pgqueuer SET heartbeat = now()
    WHERE dedupe_key = CAST(:dedupe_key AS text) AND status = 'picked'
)
SELECT status FROM trial_attempts WHERE id = CAST(:attempt_id AS bigint)
""")


async def touch(conn: AsyncConnection, *, trial_id: str, attempt_id: int) -> bool:
    """Freshen the running attempt's slot row (for PGQueuer's tools, the reaper and a later
    attempt asking whether this one runs); whether the attempt is still its trial's running one
    (no later attempt, cancel or reaper has settled it). One statement: run it in autocommit."""
    status = (
        await conn.execute(
            _TOUCH, {"dedupe_key": slots.dedupe_key(trial_id), "attempt_id": attempt_id}
        )
    ).scalar_one_or_none()
    return status == AttemptStatus.RUNNING


_MARK_LOST = text("""
UPDATE trial_attempts
SET status = 'lost', finished_at = CAST(:now AS timestamptz), error_type = 'WorkerLost',
    error_message = CAST(:reason AS text)
WHERE id = CAST(:attempt_id AS bigint) AND status = 'running'
""")


async def mark_lost(conn: AsyncConnection, *, attempt_id: int, reason: str) -> None:
    """An attempt that stopped without a result (its worker shut down): the next one need not
    wait for it. One statement."""
    await conn.execute(_MARK_LOST, {"attempt_id": attempt_id, "reason": reason, "now": now()})


# The trial is locked first, as everything that settles a trial does (``fail_trial`` reads it
# locked, then its attempts): the same order everywhere, so no two of them deadlock. The
# attempt's own UPDATE re-checks its status on the row as committed, so an attempt settled
# meanwhile (lost, superseded, cancelled) writes nothing.
_LOCKED_CURRENT_ATTEMPT = """
WITH locked AS (
    SELECT id FROM trials WHERE id = CAST(:trial_id AS varchar) FOR UPDATE
),
attempt AS (
    UPDATE trial_attempts
    SET status = CAST(:attempt_status AS varchar), finished_at = CAST(:now AS timestamptz),
        reward = CAST(:reward AS float8), rewards = CAST(:rewards AS jsonb),
        outcome = CAST(:outcome AS varchar), error_type = CAST(:error_type AS varchar),
        error_message = CAST(:error_message AS text),
        harbor_trial_dir = CAST(:harbor_trial_dir AS text)
    WHERE id = CAST(:attempt_id AS bigint) AND trial_id = CAST(:trial_id AS varchar)
      AND status = 'running' AND EXISTS (SELECT FROM locked)
    RETURNING id
)"""

# What an attempt did not report keeps the trial's value (records.KEPT_WHEN_UNREPORTED, each a
# COALESCE below). The slot given back goes, in the same statement, to the first trial in line
# for its key (priority, then FIFO, as the dispatcher's claim) when that trial is of the same
# workflow (:hand_over_to): the workflow then learns of the grant from the result and starts the
# trial at once, with no dispatcher round and no signal. This keeps the slot invariants:
# - the trial takes the very slot number given back, so the number of holders does not change,
#   and only while the key's holders are within its limit (a lowered limit is not refilled);
#   a dispatcher claiming meanwhile counted the given-back slot as held, as it still is to any
#   other transaction until this one commits;
# - the row is claimed FOR UPDATE SKIP LOCKED, as the dispatcher's claim, so no row is granted
#   twice; a head-of-line row of another workflow, or a judge call's, is left to the dispatcher
#   (woken by the DELETE's NOTIFY), so the order of the line holds;
# - the row is left unsignalled: should the result never reach the workflow, the dispatcher's
#   re-signal loop tells it, as for a dispatcher that died after its claim.
_FINISH_TRIAL = text(
    _LOCKED_CURRENT_ATTEMPT
    + """,
trial AS (
    UPDATE trials
    SET status = CAST(:status AS varchar), outcome = CAST(:outcome AS varchar),
        reward = CAST(:reward AS float8), rewards = CAST(:rewards AS jsonb),
        error_type = CAST(:error_type AS varchar), error_message = CAST(:error_message AS text),
        timings = COALESCE(CAST(:timings AS jsonb), timings),
        n_input_tokens = COALESCE(CAST(:n_input_tokens AS bigint), n_input_tokens),
        n_cache_tokens = COALESCE(CAST(:n_cache_tokens AS bigint), n_cache_tokens),
        n_output_tokens = COALESCE(CAST(:n_output_tokens AS bigint), n_output_tokens),
        cost_usd = COALESCE(CAST(:cost_usd AS float8), cost_usd),
        harbor_trial_dir = COALESCE(CAST(:harbor_trial_dir AS text), harbor_trial_dir),
        harbor_config = COALESCE(CAST(:harbor_config AS jsonb), harbor_config),
        finished_at = CAST(:now AS timestamptz)
    WHERE id = CAST(:trial_id AS varchar) AND EXISTS (SELECT FROM attempt)
),
gone AS (
    DELETE FROM pgqueuer
    WHERE dedupe_key = CAST(:dedupe_key AS text) AND headers ? :owner
      AND EXISTS (SELECT FROM attempt)
    RETURNING id, entrypoint, priority, slot, status
),
freed AS (
    SELECT gone.entrypoint AS key, gone.slot, """
    + slots.limit_of("gone.entrypoint")
    + """ AS lim
    FROM gone
    WHERE CAST(:hand_over_to AS text) IS NOT NULL AND gone.status = 'picked'
      AND gone.slot IS NOT NULL
),
head AS (
    SELECT job.id, job.headers FROM pgqueuer job, freed
    WHERE job.entrypoint = freed.key AND job.status = 'queued' AND job.headers ? :owner
    ORDER BY job.priority DESC, job.id ASC
    LIMIT 1
    FOR UPDATE OF job SKIP LOCKED
),
handed AS (
    UPDATE pgqueuer job
    SET status = 'picked', slot = freed.slot, queue_manager_id = CAST(:manager AS uuid),
        heartbeat = now(), updated = now(), attempts = job.attempts + 1
    FROM head, freed
    WHERE job.id = head.id
      AND head.headers ->> 'workflow_id' = CAST(:hand_over_to AS text)
      AND NOT head.headers ? 'judge'
      AND freed.slot < freed.lim
      -- Holders as of this statement's start: the given-back row still among them.
      AND """
    + slots.holders_of("freed.key")
    + """ <= freed.lim
    RETURNING job.id, job.slot, job.priority, job.entrypoint, job.headers
),
-- One INSERT, the slot given back logged before its hand-over, as a release and a claim are.
logged AS (
    INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
    SELECT id, CAST(:log_status AS pgqueuer_status), entrypoint, priority FROM gone
    UNION ALL
    SELECT id, 'picked', entrypoint, priority FROM handed
)
SELECT EXISTS (SELECT FROM attempt) AS current, handed.id AS handed_id, handed.slot AS handed_slot,
       handed.entrypoint AS handed_key, handed.headers AS handed_headers
FROM (SELECT 1) one LEFT JOIN handed ON true
"""
)

_RECORD_RETRYABLE = text(
    _LOCKED_CURRENT_ATTEMPT
    + """,
trial AS (
    UPDATE trials
    SET status = 'retrying', error_type = CAST(:error_type AS varchar),
        error_message = CAST(:error_message AS text)
    WHERE id = CAST(:trial_id AS varchar) AND EXISTS (SELECT FROM attempt)
)
SELECT EXISTS (SELECT FROM attempt)
"""
)


def _jsonb(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _result_parameters(
    trial_id: str, attempt_id: int, attempt_status: str, fields: TrialResultFields
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "attempt_id": attempt_id,
        "attempt_status": attempt_status,
        "now": now(),
        "status": fields.status,
        "outcome": fields.outcome,
        "reward": fields.reward,
        "rewards": _jsonb(fields.rewards),
        "error_type": fields.error_type,
        "error_message": fields.error_message,
        "timings": _jsonb(fields.timings),
        "n_input_tokens": fields.n_input_tokens,
        "n_cache_tokens": fields.n_cache_tokens,
        "n_output_tokens": fields.n_output_tokens,
        "cost_usd": fields.cost_usd,
        "harbor_trial_dir": fields.harbor_trial_dir,
        "harbor_config": _jsonb(fields.harbor_config),
    }


@dataclass(frozen=True)
class HandOver:
    """Whom a finishing trial may hand its slot to: the next trial in line, if it is of this
    workflow."""

    workflow_id: str
    default_limit: int
    manager_id: uuid.UUID


async def finish(
    conn: AsyncConnection,
    *,
    trial_id: str,
    attempt_id: int,
    attempt_status: str,
    fields: TrialResultFields,
    hand_over: HandOver | None = None,
) -> slots.SlotClaim | None:
    """Record the trial's final result from its running attempt and give its slot back, in one
    statement (run it in autocommit); with ``hand_over``, the slot goes on to the next trial in
    line when it is of that workflow (returned: its workflow must be told).

    Raises StaleAttempt, writing nothing, when the attempt is no longer its trial's running one:
    a superseded attempt neither overwrites the result nor frees the slot.
    """
    parameters = _result_parameters(trial_id, attempt_id, attempt_status, fields)
    parameters |= {
        "dedupe_key": slots.dedupe_key(trial_id),
        "owner": slots.OWNER_HEADER,
        "log_status": slot_log_status(fields.status),
        "hand_over_to": hand_over.workflow_id if hand_over else None,
        "default_limit": hand_over.default_limit if hand_over else 0,
        "manager": hand_over.manager_id if hand_over else None,
    }
    row = (await conn.execute(_FINISH_TRIAL, parameters)).one()
    if not row.current:
        raise StaleAttempt(f"attempt {attempt_id} of trial {trial_id} is no longer current")
    if row.handed_id is None:
        return None
    headers = row.handed_headers
    return slots.SlotClaim(
        job_id=row.handed_id,
        queue_key=row.handed_key,
        slot=row.handed_slot,
        trial_id=headers["trial_id"],
        workflow_id=headers["workflow_id"],
        run_number=headers.get("run", 1),
    )


async def record_retryable(
    conn: AsyncConnection, *, trial_id: str, attempt_id: int, fields: TrialResultFields
) -> None:
    """Record the attempt's failure, to be retried: the trial is ``retrying`` and keeps its slot.
    One statement; StaleAttempt as ``finish``."""
    parameters = _result_parameters(trial_id, attempt_id, AttemptStatus.INFRA_ERROR, fields)
    if not (await conn.execute(_RECORD_RETRYABLE, parameters)).scalar_one():
        raise StaleAttempt(f"attempt {attempt_id} of trial {trial_id} is no longer current")
