"""Queries of the slot table: PGQueuer 1.6's ``pgqueuer`` table used as a per-queue-key semaphore.

A waiting trial is a ``queued`` row whose entrypoint is its queue key; a trial holding one of the
key's slots is a ``picked`` row with ``slot`` in ``0..limit-1``. Our rows carry an
``execute_after`` in the year 9999: PGQueuer's own dequeue only takes rows with
``execute_after < now()``, so a PGQueuer worker sharing a key counts our holders against its
limit but never runs our rows, while ``queue_size()`` and ``pgq dashboard`` still see them. The
partial unique index on ``(entrypoint, slot) WHERE status = 'picked'`` makes over-admission
impossible even when claims race.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

NOTIFY_CHANNEL = "ch_pgqueuer"
# Our own wake-ups (a changed limit) go on a channel of ours: PGQueuer parses every
# ch_pgqueuer payload.
LIMITS_CHANNEL = "oddish_limits"
# Marks a row as ours; rows without it belong to other PGQueuer producers and are never touched.
OWNER_HEADER = "oddish"
# Not 'infinity': PGQueuer subtracts now() from the earliest future execute_after.
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class SlotClaim:
    job_id: int
    queue_key: str
    slot: int
    trial_id: str
    workflow_id: str
    run_number: int = 1
    # A judge call's row (oddish.judge.slot): its holder polls for the grant, nobody is signalled.
    judge: bool = False


@dataclass(frozen=True)
class WaitingTrial:
    trial_id: str
    workflow_id: str
    queue_key: str
    priority: int


def dedupe_key(trial_id: str) -> str:
    return f"trial:{trial_id}"


def limit_of(key: str) -> str:
    """SQL for the limit in force on the queue key ``key`` (an SQL expression): the key's own
    row of ``queue_limits``, else the ``*`` row, else the ``:default_limit`` parameter."""
    return (
        f"COALESCE((SELECT max_concurrent FROM queue_limits WHERE key = {key}), "
        "(SELECT max_concurrent FROM queue_limits WHERE key = '*'), "
        "CAST(:default_limit AS integer))"
    )


def holders_of(key: str) -> str:
    """SQL for how many hold a slot of the queue key ``key`` (an SQL expression). PGQueuer counts
    holders by a set queue_manager_id, whatever their status: so do we."""
    return (
        "(SELECT count(*) FROM pgqueuer holder "
        f"WHERE holder.entrypoint = {key} AND holder.queue_manager_id IS NOT NULL)"
    )


def _headers(trial_id: str, workflow_id: str, run_number: int) -> str:
    return json.dumps(
        {OWNER_HEADER: 1, "trial_id": trial_id, "workflow_id": workflow_id, "run": run_number}
    )


async def enqueue(
    conn: AsyncConnection,
    *,
    trials: list[tuple[str, str]],
    workflow_id: str,
    priority: int,
    run_number: int,
) -> None:
    """Insert a waiting row per ``(trial_id, queue_key)``, in that order (FIFO); a trial already
    waiting or holding is left alone. One statement for them all: one round trip, and one
    NOTIFY from the statement trigger."""
    if not trials:
        return
    await conn.execute(
        text(
            """
            WITH added AS (
                INSERT INTO pgqueuer (priority, entrypoint, dedupe_key, payload, headers,
                                      execute_after, status)
                SELECT CAST(:priority AS integer), line.queue_key, line.dedupe_key, NULL,
                       CAST(line.headers AS jsonb), CAST(:far_future AS timestamptz), 'queued'
                FROM unnest(CAST(:queue_keys AS text[]), CAST(:dedupe_keys AS text[]),
                            CAST(:headers AS text[]))
                     WITH ORDINALITY AS line(queue_key, dedupe_key, headers, place)
                ORDER BY line.place
                ON CONFLICT (dedupe_key)
                    WHERE ((status = ANY (ARRAY['queued'::pgqueuer_status,
                                                'picked'::pgqueuer_status]))
                           AND (dedupe_key IS NOT NULL))
                DO NOTHING
                RETURNING id, entrypoint, priority
            )
            INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
            SELECT id, 'queued', entrypoint, priority FROM added
            """
        ),
        {
            "priority": priority,
            "queue_keys": [queue_key for _, queue_key in trials],
            "dedupe_keys": [dedupe_key(trial_id) for trial_id, _ in trials],
            "headers": [_headers(trial_id, workflow_id, run_number) for trial_id, _ in trials],
            "far_future": NEVER,
        },
    )


def judge_dedupe_key(subject: str) -> str:
    return f"judge:{subject}"


async def enqueue_judge(
    conn: AsyncConnection, *, subject: str, queue_key: str, workflow_id: str, priority: int
) -> None:
    """Put a judge call in line for a slot of ``queue_key``, among the trials waiting for it
    (same priority order). A row left by an earlier attempt of the same call goes first."""
    await release_judge(conn, subject=subject, log_status="canceled")
    headers = json.dumps(
        {
            OWNER_HEADER: 1,
            "judge": 1,
            "trial_id": subject,
            "workflow_id": workflow_id,
            "run": 1,
            # Nobody to signal: the holder polls for its grant.
            "signalled": True,
        }
    )
    await conn.execute(
        text(
            """
            WITH added AS (
                INSERT INTO pgqueuer (priority, entrypoint, dedupe_key, payload, headers,
                                      execute_after, status)
                VALUES (:priority, :queue_key, :dedupe_key, NULL, CAST(:headers AS jsonb),
                        :far_future, 'queued')
                RETURNING id, entrypoint, priority
            )
            INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
            SELECT id, 'queued', entrypoint, priority FROM added
            """
        ),
        {
            "priority": priority,
            "queue_key": queue_key,
            "dedupe_key": judge_dedupe_key(subject),
            "headers": headers,
            "far_future": NEVER,
        },
    )


async def judge_slot_state(conn: AsyncConnection, subject: str) -> str | None:
    """'queued' or 'picked' for the judge call's row (touched: its holder is alive), None when
    it is gone (released by a cancel, say)."""
    row = await conn.execute(
        text(
            "UPDATE pgqueuer SET heartbeat = now() WHERE dedupe_key = :dk AND headers ? :owner "
            "RETURNING status"
        ),
        {"dk": judge_dedupe_key(subject), "owner": OWNER_HEADER},
    )
    status = row.scalar_one_or_none()
    return None if status is None else str(status)


async def release_judge(conn: AsyncConnection, *, subject: str, log_status: str) -> int:
    rows = await conn.execute(
        text(
            """
            WITH gone AS (
                DELETE FROM pgqueuer WHERE dedupe_key = :dk AND headers ? :owner
                RETURNING id, entrypoint, priority
            )
            INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
            SELECT id, CAST(:status AS pgqueuer_status), entrypoint, priority FROM gone
            RETURNING job_id
            """
        ),
        {"dk": judge_dedupe_key(subject), "owner": OWNER_HEADER, "status": log_status},
    )
    return len(rows.fetchall())


async def keys_with_waiting_trials(conn: AsyncConnection, *, default_limit: int) -> list[str]:
    """Keys with trials waiting and, as far as this read sees, a free slot: only they are worth
    a claim. A slot freed after this read wakes the dispatchers again (the DELETE's NOTIFY comes
    after its commit); most slots freed by a finishing trial are handed over in the same
    statement (oddish.db.attempts), and a key that has none free costs no claim."""
    rows = await conn.execute(
        text(
            f"""
            SELECT w.entrypoint FROM (
                SELECT DISTINCT entrypoint FROM pgqueuer
                WHERE status = 'queued' AND headers ? :owner
            ) w
            WHERE {holders_of("w.entrypoint")} < {limit_of("w.entrypoint")}
            """
        ),
        {"owner": OWNER_HEADER, "default_limit": default_limit},
    )
    return [r[0] for r in rows]


async def claim(
    conn: AsyncConnection,
    *,
    queue_key: str,
    default_limit: int,
    manager_id: uuid.UUID,
    for_workflow: str | None = None,
) -> list[SlotClaim]:
    """Give free slots of ``queue_key`` to its waiting trials: highest priority first, then FIFO.

    Must run inside a transaction. Claims of one key are serialised by an advisory lock, so our
    dispatchers never race each other; a PGQueuer worker racing us loses on the unique slot index
    (SQLSTATE 23505), which the caller treats as "no capacity this time".

    With ``for_workflow``, only as far as the line's head is that workflow's trials: the first
    row of another workflow (or a judge call's) ends the claim, so nobody is overtaken.
    """
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('oddish-slot:' || :key))"), {"key": queue_key}
    )
    rows = await conn.execute(
        text(
            f"""
            WITH lim AS (
                SELECT {limit_of(":key")} AS n
            ),
            -- Holders beyond a lowered limit still count, so the limit holds while they finish.
            capacity AS (
                SELECT GREATEST(lim.n - {holders_of(":key")}, 0) AS free FROM lim
            ),
            free_slots AS (
                SELECT s.slot, ROW_NUMBER() OVER (ORDER BY s.slot) AS rnk
                FROM lim, GENERATE_SERIES(0, lim.n - 1) AS s(slot)
                WHERE NOT EXISTS (
                    SELECT FROM pgqueuer holder
                    WHERE holder.entrypoint = :key AND holder.status = 'picked'
                      AND holder.slot = s.slot
                )
                LIMIT (SELECT free FROM capacity)
            ),
            waiting AS (
                SELECT id, rnk FROM (
                    SELECT id, ROW_NUMBER() OVER line AS rnk,
                           -- Whether every row up to this one is the workflow's (or any is).
                           bool_and(
                               CAST(:workflow AS text) IS NULL
                               OR (headers ->> 'workflow_id' = CAST(:workflow AS text)
                                   AND NOT headers ? 'judge')
                           ) OVER line AS in_head
                    FROM (
                        SELECT id, priority, headers FROM pgqueuer
                        WHERE entrypoint = :key AND status = 'queued' AND headers ? :owner
                        ORDER BY priority DESC, id ASC
                        LIMIT (SELECT free FROM capacity)
                        FOR UPDATE SKIP LOCKED
                    ) w
                    WINDOW line AS (ORDER BY priority DESC, id ASC)
                ) ordered
                WHERE in_head
            ),
            claimed AS (
                UPDATE pgqueuer job
                SET status = 'picked', slot = free_slots.slot, queue_manager_id = :manager,
                    heartbeat = now(), updated = now(), attempts = job.attempts + 1
                FROM waiting JOIN free_slots USING (rnk)
                WHERE job.id = waiting.id
                RETURNING job.id, job.slot, job.priority, job.entrypoint, job.headers
            ),
            logged AS (
                INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
                SELECT id, 'picked', entrypoint, priority FROM claimed
            )
            SELECT id, slot, headers FROM claimed ORDER BY id
            """
        ),
        {
            "key": queue_key,
            "default_limit": default_limit,
            "owner": OWNER_HEADER,
            "manager": manager_id,
            "workflow": for_workflow,
        },
    )
    return [
        SlotClaim(
            job_id=r.id,
            queue_key=queue_key,
            slot=r.slot,
            trial_id=r.headers["trial_id"],
            workflow_id=r.headers["workflow_id"],
            run_number=r.headers.get("run", 1),
            judge=bool(r.headers.get("judge")),
        )
        for r in rows
    ]


async def mark_signalled(conn: AsyncConnection, job_ids: list[int]) -> None:
    if job_ids:
        await conn.execute(
            text(
                "UPDATE pgqueuer SET headers = headers || '{\"signalled\": true}'::jsonb "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": job_ids},
        )


async def unsignalled_holders(conn: AsyncConnection, *, older_than_sec: float) -> list[SlotClaim]:
    """Holders whose owner was never told (the dispatcher that claimed them died before
    signalling)."""
    rows = await conn.execute(
        text(
            """
            SELECT id, entrypoint, slot, headers FROM pgqueuer
            WHERE status = 'picked' AND headers ? :owner AND NOT (headers ? 'signalled')
              AND updated < now() - make_interval(secs => :age)
            """
        ),
        {"owner": OWNER_HEADER, "age": older_than_sec},
    )
    return [
        SlotClaim(
            r.id,
            r.entrypoint,
            r.slot,
            r.headers["trial_id"],
            r.headers["workflow_id"],
            r.headers.get("run", 1),
        )
        for r in rows
    ]


async def heard_from_within(conn: AsyncConnection, trial_id: str, seconds: float) -> bool:
    """Whether the trial's slot holder was touched in the last ``seconds`` (its attempt runs)."""
    row = await conn.execute(
        text(
            "SELECT EXISTS (SELECT FROM pgqueuer WHERE dedupe_key = :dk AND status = 'picked' "
            "AND heartbeat > now() - make_interval(secs => :s))"
        ),
        {"dk": dedupe_key(trial_id), "s": seconds},
    )
    return bool(row.scalar_one())


async def release(conn: AsyncConnection, *, trial_ids: list[str], log_status: str) -> int:
    """Give back (or stop waiting for) the slots of ``trial_ids``; logs them as PGQueuer would."""
    if not trial_ids:
        return 0
    rows = await conn.execute(
        text(
            """
            WITH gone AS (
                DELETE FROM pgqueuer
                WHERE dedupe_key = ANY(:dks) AND headers ? :owner
                RETURNING id, entrypoint, priority
            )
            INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
            SELECT id, CAST(:status AS pgqueuer_status), entrypoint, priority FROM gone
            RETURNING job_id
            """
        ),
        {"dks": [dedupe_key(t) for t in trial_ids], "owner": OWNER_HEADER, "status": log_status},
    )
    return len(rows.fetchall())


async def release_workflow(conn: AsyncConnection, *, workflow_id: str, log_status: str) -> int:
    """Give back every row of the workflow, and of its children (a large task's batches have
    ids under its own: ``task/<id>/batch-<n>``)."""
    rows = await conn.execute(
        text(
            """
            WITH gone AS (
                DELETE FROM pgqueuer
                WHERE headers ? :owner
                  AND (headers ->> 'workflow_id' = :wf
                       OR starts_with(headers ->> 'workflow_id', :wf || '/'))
                RETURNING id, entrypoint, priority
            )
            INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
            SELECT id, CAST(:status AS pgqueuer_status), entrypoint, priority FROM gone
            RETURNING job_id
            """
        ),
        {"wf": workflow_id, "owner": OWNER_HEADER, "status": log_status},
    )
    return len(rows.fetchall())


async def stale_workflow_ids(conn: AsyncConnection, *, lease_sec: float) -> list[str]:
    """Workflows owning rows not heard from within the lease; the reaper asks Temporal about
    them."""
    rows = await conn.execute(
        text(
            """
            SELECT DISTINCT headers ->> 'workflow_id' FROM pgqueuer
            WHERE headers ? :owner
              AND GREATEST(heartbeat, updated) < now() - make_interval(secs => :lease)
            """
        ),
        {"owner": OWNER_HEADER, "lease": lease_sec},
    )
    return [r[0] for r in rows]


async def touch_workflow(conn: AsyncConnection, workflow_id: str) -> None:
    """The reaper found the workflow alive: its rows need no second look for another lease."""
    await conn.execute(
        text(
            "UPDATE pgqueuer SET heartbeat = now() "
            "WHERE headers ? :owner AND headers ->> 'workflow_id' = :wf"
        ),
        {"owner": OWNER_HEADER, "wf": workflow_id},
    )


async def touch_workflows(conn: AsyncConnection, workflow_ids: list[str]) -> None:
    """``touch_workflow`` for many workflows in one statement (the reaper's batches)."""
    if workflow_ids:
        await conn.execute(
            text(
                "UPDATE pgqueuer SET heartbeat = now() "
                "WHERE headers ? :owner AND headers ->> 'workflow_id' = ANY(:wfs)"
            ),
            {"owner": OWNER_HEADER, "wfs": workflow_ids},
        )


async def queue_stats(conn: AsyncConnection, default_limit: int) -> list[dict[str, Any]]:
    """Per queue key: waiting, holding and the limit in force."""
    rows = await conn.execute(
        text(
            """
            WITH keys AS (
                SELECT entrypoint AS key FROM pgqueuer
                UNION SELECT key FROM queue_limits
            )
            SELECT keys.key,
                   COALESCE(l.max_concurrent, :default_limit) AS limit,
                   (SELECT count(*) FROM pgqueuer p
                     WHERE p.entrypoint = keys.key AND p.status = 'queued') AS waiting,
                   (SELECT count(*) FROM pgqueuer p
                     WHERE p.entrypoint = keys.key AND p.status = 'picked') AS running
            FROM keys LEFT JOIN queue_limits l ON l.key = keys.key
            ORDER BY keys.key
            """
        ),
        {"default_limit": default_limit},
    )
    return [dict(r._mapping) for r in rows]


async def set_limit(conn: AsyncConnection, queue_key: str, limit: int) -> None:
    await conn.execute(
        text(
            """
            INSERT INTO queue_limits (key, max_concurrent, updated_at) VALUES (:k, :n, now())
            ON CONFLICT (key) DO UPDATE SET max_concurrent = EXCLUDED.max_concurrent,
                                            updated_at = now()
            """
        ),
        {"k": queue_key, "n": limit},
    )
    # A raised limit frees capacity: wake every dispatcher.
    await conn.execute(text(f"NOTIFY {LIMITS_CHANNEL}"))


async def limits(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(text("SELECT key, max_concurrent FROM queue_limits ORDER BY key"))
    return {r.key: r.max_concurrent for r in rows}
