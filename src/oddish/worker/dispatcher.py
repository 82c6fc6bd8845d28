"""The slot dispatcher: hands free slots to waiting trials and tells their workflows.

Each worker process runs one. Dispatchers wake on Postgres NOTIFY (the slot table's trigger fires
on every insert and delete, so a given-back slot wakes them at once) and sweep every few seconds in
case a notification was missed. Waiting trials cost nothing here: they are rows, not coroutines.

Granting is one loop; maintenance (signalling again, reaping the rows of closed workflows,
starting tasks nobody started) runs in loops of its own beside it, and asks Temporal about many
workflows at once with bounded concurrent calls: however slow a maintenance round (thousands of
workflows, a slow Temporal), no grant waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from oddish.contracts import SlotGrant
from oddish.db import records, slots
from oddish.db.connection import database_url, get_engine, get_session, plain_dsn
from oddish.temporal_gateway import grant_slot, workflow_statuses
from oddish.worker.health import WorkerHealth
from oddish.worker.unstarted import UnstartedTaskStarter
from oddish.workflows.ids import task_id_of_workflow

log = logging.getLogger(__name__)

# A claimed row whose owner has not been told after this long is signalled again (its
# dispatcher died, or Temporal was unreachable): checked every RESIGNAL_EVERY_SEC, so a slot
# granted during a Temporal outage is taken up within seconds of its return.
RESIGNAL_AFTER_SEC = 3.0
RESIGNAL_EVERY_SEC = 1.0
# Workflows the reaper asks Temporal about per batch: their rows are touched (or given back)
# batch by batch, so a round cut short by an outage keeps what it learnt.
REAP_BATCH = 500
# On stop, a maintenance round in progress gets this long to finish before it is cancelled
# (whatever it had not committed is done again by the next worker's round).
STOP_GRACE_SEC = 5.0


class SlotDispatcher:
    def __init__(
        self,
        client: Client,
        *,
        default_limit: int,
        poll_interval_sec: float,
        lease_sec: float,
        health: WorkerHealth | None = None,
    ) -> None:
        self._client = client
        self._health = health
        self._default_limit = default_limit
        self._poll_interval = poll_interval_sec
        self._lease_sec = lease_sec
        self.manager_id = uuid.uuid4()
        self._wake = asyncio.Event()
        # The slot lease is how long anything here may go unheard before it counts as dead.
        self._unstarted = UnstartedTaskStarter(client, older_than_sec=lease_sec)
        # Rows this process is signalling right now: the resignal loop leaves them to it.
        self._signalling: set[int] = set()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        maintenance_every = min(self._lease_sec / 4, 30.0)
        maintenance = [
            asyncio.create_task(self._every(stop, RESIGNAL_EVERY_SEC, self._resignal)),
            asyncio.create_task(self._every(stop, maintenance_every, self._reap)),
            asyncio.create_task(self._every(stop, maintenance_every, self._start_unstarted)),
        ]
        try:
            await self._grant_until(stop)
        finally:
            _, unfinished = await asyncio.wait(maintenance, timeout=STOP_GRACE_SEC)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*maintenance, return_exceptions=True)

    async def _grant_until(self, stop: asyncio.Event) -> None:
        """The grant loop: sweep on every wake-up (a NOTIFY) and at least every poll interval."""
        listener: asyncpg.Connection | None = None
        while not stop.is_set():
            try:
                if listener is None or listener.is_closed():
                    listener = await self._listen()
            except Exception as exc:
                log.warning("slot dispatcher: cannot LISTEN (%s); polling meanwhile", exc)
                listener = None
            await self._guarded(self.sweep)
            if self._health is not None:
                self._health.dispatcher_went_round()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()
            self._wake.clear()
        if listener is not None and not listener.is_closed():
            await listener.close()

    async def _every(
        self, stop: asyncio.Event, interval: float, step: Callable[[], Awaitable[object]]
    ) -> None:
        """Run ``step`` now and then ``interval`` after each round ends, until ``stop``; a round
        that fails waits its turn like any other."""
        while not stop.is_set():
            await self._guarded(step)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _guarded(self, step: Callable[[], Awaitable[object]]) -> None:
        """Run one step; a failure is logged and retried on the next round, never fatal."""
        try:
            await step()
        except (OSError, asyncpg.PostgresError, DBAPIError) as exc:
            log.warning("slot dispatcher: database unavailable (%s); retrying", exc)
        except RPCError as exc:
            log.warning("slot dispatcher: Temporal unavailable (%s); retrying", exc)
        except Exception:
            log.exception("slot dispatcher: %s failed; retrying", getattr(step, "__name__", step))

    async def _listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(plain_dsn(database_url()))
        await conn.add_listener(slots.NOTIFY_CHANNEL, self._on_notify)
        await conn.add_listener(slots.LIMITS_CHANNEL, self._on_notify)
        return conn

    async def sweep(self) -> int:
        """Claim what fits for every key with waiting trials and a free slot; returns the number
        of grants."""
        engine = get_engine()
        async with engine.connect() as conn:
            keys = await slots.keys_with_waiting_trials(conn, default_limit=self._default_limit)
        granted = 0
        for key in keys:
            try:
                async with engine.begin() as conn:
                    claims = await slots.claim(
                        conn,
                        queue_key=key,
                        default_limit=self._default_limit,
                        manager_id=self.manager_id,
                    )
            except IntegrityError:
                # A PGQueuer worker took the slot first (unique slot index): no capacity now.
                continue
            await self._signal(claims)
            granted += len(claims)
        return granted

    async def _signal(self, claims: Iterable[slots.SlotClaim]) -> None:
        # A judge call waits for its grant by looking at its row: there is nobody to signal.
        claims = [c for c in claims if not c.judge]
        if not claims:
            return
        job_ids = {c.job_id for c in claims}
        self._signalling |= job_ids
        try:
            results = await asyncio.gather(
                *(
                    grant_slot(
                        self._client, c.workflow_id, SlotGrant(c.trial_id, c.slot, c.run_number)
                    )
                    for c in claims
                ),
                return_exceptions=True,
            )
        finally:
            self._signalling -= job_ids
        told = [c.job_id for c, ok in zip(claims, results, strict=True) if ok is True]
        gone = [c.trial_id for c, ok in zip(claims, results, strict=True) if ok is False]
        async with get_engine().begin() as conn:
            await slots.mark_signalled(conn, told)
            await slots.release(conn, trial_ids=gone, log_status="canceled")
        for c, ok in zip(claims, results, strict=True):
            if isinstance(ok, BaseException):
                log.warning("could not signal %s about trial %s: %s", c.workflow_id, c.trial_id, ok)

    async def _resignal(self) -> None:
        async with get_engine().connect() as conn:
            pending = await slots.unsignalled_holders(conn, older_than_sec=RESIGNAL_AFTER_SEC)
        await self._signal([c for c in pending if c.job_id not in self._signalling])

    async def _start_unstarted(self) -> None:
        await self._unstarted.start_all()

    async def _reap(self) -> None:
        """Give back the slots of workflows that no longer run (terminated, say)."""
        async with get_engine().connect() as conn:
            workflow_ids = await slots.stale_workflow_ids(conn, lease_sec=self._lease_sec)
        for first in range(0, len(workflow_ids), REAP_BATCH):
            await self._reap_batch(workflow_ids[first : first + REAP_BATCH])

    async def _reap_batch(self, workflow_ids: list[str]) -> None:
        # Asked of each workflow itself (not visibility, which may lag): only a workflow Temporal
        # says is closed, or does not know, loses its rows. One whose describe failed is left
        # for the next round.
        statuses = await workflow_statuses(self._client, workflow_ids)
        running = [w for w, s in statuses.items() if s == WorkflowExecutionStatus.RUNNING]
        async with get_engine().begin() as conn:
            await slots.touch_workflows(conn, running)
        for workflow_id, status in statuses.items():
            if status != WorkflowExecutionStatus.RUNNING:
                await self._release_closed(workflow_id)

    async def _release_closed(self, workflow_id: str) -> None:
        async with get_session() as session:
            conn = await session.connection()
            n = await slots.release_workflow(conn, workflow_id=workflow_id, log_status="canceled")
            task_id = task_id_of_workflow(workflow_id)
            if task_id is not None:
                await records.settle_abandoned_task(session, task_id)
            await session.commit()
        log.warning("reaped %d slot rows of %s, which no longer runs", n, workflow_id)
