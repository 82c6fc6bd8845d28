"""Queries that read and write the canonical records (tasks, trials, attempts, analyses,
verdicts)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import defer, selectinload

from oddish.db import slots
from oddish.db.models import (
    AnalysisModel,
    ExperimentModel,
    TaskModel,
    TrialAttemptModel,
    TrialModel,
    VerdictModel,
)
from oddish.db.stats import trial_result_sql
from oddish.statuses import (
    RETRYABLE_RESULTS,
    RETRYABLE_TRIAL_STATUSES,
    TERMINAL_JOB_STATUSES,
    TERMINAL_TASK_STATUSES,
    AttemptStatus,
    JobStatus,
    TaskStatus,
)


def now() -> datetime:
    return datetime.now(UTC)


class RecordNotFound(LookupError):
    pass


class StaleAttempt(RuntimeError):
    """A newer attempt of the trial has started (or the trial was settled) since this one began."""


async def _current_attempt(
    session: AsyncSession, trial_id: str, attempt_id: int
) -> TrialAttemptModel:
    """The attempt, if it is still its trial's running, latest attempt; the trial row is locked."""
    await session.get(TrialModel, trial_id, with_for_update=True, populate_existing=True)
    attempt = await session.get(TrialAttemptModel, attempt_id, populate_existing=True)
    latest = (
        await session.execute(
            select(func.max(TrialAttemptModel.number)).where(TrialAttemptModel.trial_id == trial_id)
        )
    ).scalar_one()
    if attempt is None or attempt.status != AttemptStatus.RUNNING or attempt.number != latest:
        raise StaleAttempt(f"attempt {attempt_id} of trial {trial_id} is no longer current")
    return attempt


@dataclass
class TrialResultFields:
    """What a finished attempt recorded; copied onto the trial row when it is the final one."""

    status: str
    outcome: str | None
    reward: float | None = None
    rewards: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    timings: dict[str, Any] | None = None
    n_input_tokens: int | None = None
    n_cache_tokens: int | None = None
    n_output_tokens: int | None = None
    cost_usd: float | None = None
    harbor_trial_dir: str | None = None
    harbor_config: dict[str, Any] | None = None

    def trial_values(self) -> dict[str, Any]:
        """The trial row's columns to write; what an attempt did not report keeps its value."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None or f.name not in KEPT_WHEN_UNREPORTED
        }


# Trial columns an attempt may not report (it died before Harbor measured them).
KEPT_WHEN_UNREPORTED = frozenset(
    {
        "timings",
        "n_input_tokens",
        "n_cache_tokens",
        "n_output_tokens",
        "cost_usd",
        "harbor_trial_dir",
        "harbor_config",
    }
)
# The result columns an attempt row keeps of its own.
ATTEMPT_RESULT_FIELDS = (
    "reward",
    "rewards",
    "outcome",
    "error_type",
    "error_message",
    "harbor_trial_dir",
)


# A new task, its trials and (unless it exists) its experiment, in one statement: a submission's
# only write, and SQLAlchemy's execution of four statements cost the API more than its request.
# The experiment is the one with id :ref, else the newest named :ref, else :new_id made now.
_INSERT_SUBMITTED_TASK = text("""
WITH by_id AS (
    SELECT id FROM experiments WHERE id = CAST(:ref AS varchar)
),
found AS (
    SELECT id FROM by_id
    UNION ALL
    (SELECT id FROM experiments
     WHERE name = CAST(:ref AS varchar) AND NOT EXISTS (SELECT 1 FROM by_id)
     ORDER BY created_at DESC
     LIMIT 1)
),
made AS (
    INSERT INTO experiments (id, name)
    SELECT CAST(:new_id AS varchar), CAST(:new_name AS varchar)
    WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT (id) DO NOTHING
),
task AS (
    INSERT INTO tasks (
        id, experiment_id, name, task_path, archive_sha256, status, priority, "user",
        run_analysis, analysis_model, verdict_model, submission_key, workflow_id
    )
    SELECT
        CAST(:id AS varchar), COALESCE((SELECT id FROM found), CAST(:new_id AS varchar)),
        CAST(:name AS varchar), CAST(:task_path AS text), CAST(:archive_sha256 AS varchar),
        CAST(:status AS varchar), CAST(:priority AS integer), CAST(:user AS varchar),
        CAST(:run_analysis AS boolean), CAST(:analysis_model AS varchar),
        CAST(:verdict_model AS varchar), CAST(:submission_key AS varchar),
        CAST(:workflow_id AS varchar)
    RETURNING experiment_id
)
INSERT INTO trials (
    id, task_id, "index", agent, model, queue_key, environment, spec, status, run_number
)
SELECT
    t.id, CAST(:id AS varchar), t.position, t.agent, t.model, t.queue_key, t.environment,
    CAST(t.spec AS jsonb), t.status, t.run_number
FROM unnest(
    CAST(:trial_ids AS varchar[]), CAST(:trial_indexes AS integer[]),
    CAST(:trial_agents AS varchar[]), CAST(:trial_models AS varchar[]),
    CAST(:trial_queue_keys AS varchar[]), CAST(:trial_environments AS varchar[]),
    CAST(:trial_specs AS text[]), CAST(:trial_statuses AS varchar[]),
    CAST(:trial_run_numbers AS integer[])
) AS t(id, position, agent, model, queue_key, environment, spec, status, run_number)
RETURNING (SELECT experiment_id FROM task)
""")
# The task's columns the statement sets, besides its experiment.
SUBMITTED_TASK_COLUMNS = (
    "id",
    "name",
    "task_path",
    "archive_sha256",
    "status",
    "priority",
    "user",
    "run_analysis",
    "analysis_model",
    "verdict_model",
    "submission_key",
    "workflow_id",
)
_SUBMITTED_TRIAL_COLUMNS = (
    ("trial_ids", "id"),
    ("trial_indexes", "index"),
    ("trial_agents", "agent"),
    ("trial_models", "model"),
    ("trial_queue_keys", "queue_key"),
    ("trial_environments", "environment"),
    ("trial_statuses", "status"),
    ("trial_run_numbers", "run_number"),
)


async def insert_submitted_task(
    conn: AsyncConnection,
    task: dict[str, Any],
    trials: list[dict[str, Any]],
    *,
    experiment_ref: str | None,
    new_experiment: tuple[str, str],
) -> str:
    """Insert a new task (``SUBMITTED_TASK_COLUMNS``) and its trials (at least one), in the
    experiment ``experiment_ref`` names: its id, else the newest of that name, else made now as
    ``new_experiment`` (id, name). Returns the experiment's id. IntegrityError when the task's
    submission key is taken. One statement: on an autocommit connection, its own transaction."""
    params: dict[str, Any] = {column: task[column] for column in SUBMITTED_TASK_COLUMNS}
    params.update(ref=experiment_ref, new_id=new_experiment[0], new_name=new_experiment[1])
    for param, column in _SUBMITTED_TRIAL_COLUMNS:
        params[param] = [trial[column] for trial in trials]
    # The trials of one config share their spec's dict: each is dumped once.
    dumped: dict[int, str] = {}
    for trial in trials:
        if id(trial["spec"]) not in dumped:
            dumped[id(trial["spec"])] = json.dumps(trial["spec"])
    params["trial_specs"] = [dumped[id(trial["spec"])] for trial in trials]
    rows = (await conn.execute(_INSERT_SUBMITTED_TASK, params)).scalars().all()
    return str(rows[0])


async def experiment_id_for(session: AsyncSession, ref: str) -> str | None:
    """The experiment ``ref`` names: the one with that id, else the newest with that name."""
    by_id = select(ExperimentModel.id).where(ExperimentModel.id == ref)
    if (await session.execute(by_id)).scalar_one_or_none() is not None:
        return ref
    return (
        await session.execute(
            select(ExperimentModel.id)
            .where(ExperimentModel.name == ref)
            .order_by(ExperimentModel.created_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def task_by_submission_key(session: AsyncSession, key: str) -> TaskModel | None:
    return (
        await session.execute(select(TaskModel).where(TaskModel.submission_key == key))
    ).scalar_one_or_none()


async def get_task(
    session: AsyncSession, task_id: str, *, with_trials: bool = False, results_only: bool = False
) -> TaskModel:
    """The task; ``with_trials``, with its trials, their attempts and analyses, and its verdict.
    ``results_only`` leaves out what a verdict does not read (and a 5,000-trial task would
    make slow to load): each trial's spec, Harbor config and timings, each attempt's result."""
    query = select(TaskModel).where(TaskModel.id == task_id)
    if with_trials:
        trials = selectinload(TaskModel.trials)
        if results_only:
            trials = trials.options(
                defer(TrialModel.spec), defer(TrialModel.harbor_config), defer(TrialModel.timings)
            )
        query = query.options(
            trials.selectinload(TrialModel.attempts).load_only(
                TrialAttemptModel.id, TrialAttemptModel.trial_id, TrialAttemptModel.number
            )
            if results_only
            else trials.selectinload(TrialModel.attempts),
            trials.selectinload(TrialModel.analysis),
            selectinload(TaskModel.verdict),
        )
    task = (await session.execute(query)).scalar_one_or_none()
    if task is None:
        raise RecordNotFound(f"no task {task_id!r}")
    return task


async def get_trial(session: AsyncSession, trial_id: str, *, lock: bool = False) -> TrialModel:
    """The trial with its task, attempts and analysis. ``lock`` locks the trial row first, as
    an attempt's finish does: the attempts are then read as of that finish, not in between (the
    row and its attempts are separate reads)."""
    query = (
        select(TrialModel)
        .where(TrialModel.id == trial_id)
        .options(
            selectinload(TrialModel.task),
            selectinload(TrialModel.attempts),
            selectinload(TrialModel.analysis),
        )
    )
    if lock:
        query = query.with_for_update(of=TrialModel)
    trial = (await session.execute(query)).scalar_one_or_none()
    if trial is None:
        raise RecordNotFound(f"no trial {trial_id!r}")
    return trial


async def set_task_status(
    session: AsyncSession, task_id: str, status: str, error_message: str | None = None
) -> None:
    values: dict[str, Any] = {"status": status}
    if status == TaskStatus.RUNNING:
        # A retried task runs again: it keeps its first start and is no longer finished.
        values["started_at"] = func.coalesce(TaskModel.started_at, now())
        values["finished_at"] = None
        values["error_message"] = None
    if status in TERMINAL_TASK_STATUSES:
        values["finished_at"] = now()
    if error_message is not None:
        values["error_message"] = error_message
    await session.execute(update(TaskModel).where(TaskModel.id == task_id).values(**values))


_QUEUE_FOR_RUN = text("""
WITH updated AS (
    UPDATE trials
    SET status = 'queued', run_number = CAST(:run AS integer), outcome = NULL, reward = NULL,
        rewards = NULL, error_type = NULL, error_message = NULL, finished_at = NULL
    WHERE id = ANY(CAST(:ids AS varchar[]))
      AND (status = 'pending'
           OR (run_number < CAST(:run AS integer)
               AND status = ANY(CAST(:retryable AS varchar[]))))
    RETURNING id
),
-- Disjoint from ``updated``: the snapshot's rows already queued for this run.
waiting AS (
    SELECT id FROM updated
    UNION ALL
    SELECT id FROM trials
    WHERE id = ANY(CAST(:ids AS varchar[])) AND status = 'queued'
      AND run_number = CAST(:run AS integer)
),
cleared AS (
    DELETE FROM analyses WHERE trial_id IN (SELECT id FROM waiting)
)
SELECT id FROM waiting
""")


async def queue_trials_for_run(
    session: AsyncSession, trial_ids: list[str], run_number: int
) -> list[str]:
    """Put trials in line for run ``run_number``; returns those now waiting for a slot in it.

    A new trial, or a finished one of an earlier run (retried: it did not pass), becomes
    ``queued`` with its previous result cleared (its attempts stay). A trial already running or
    finished in this run is left out, so a repeated request never puts a finished trial in line
    again. The analysis of an earlier run no longer describes the trial: it is deleted, and
    redone after this run. One statement (one round trip) for any number of trials.
    """
    rows = await session.execute(
        _QUEUE_FOR_RUN,
        {
            "ids": trial_ids,
            "run": run_number,
            "retryable": [s.value for s in RETRYABLE_TRIAL_STATUSES],
        },
    )
    return list(rows.scalars())


def _fill_attempt(attempt: TrialAttemptModel, fields: TrialResultFields, status: str) -> None:
    attempt.status = status
    attempt.finished_at = now()
    for name in ATTEMPT_RESULT_FIELDS:
        setattr(attempt, name, getattr(fields, name))


async def finish_trial(
    session: AsyncSession,
    *,
    trial_id: str,
    attempt_id: int | None,
    attempt_status: str,
    fields: TrialResultFields,
) -> None:
    """Record a trial's final result and give its slot back, in the caller's one transaction.

    Raises StaleAttempt, writing nothing, when ``attempt_id`` is no longer the trial's current
    attempt: a superseded attempt must neither overwrite the result nor free the slot.
    """
    if attempt_id is not None:
        attempt = await _current_attempt(session, trial_id, attempt_id)
        _fill_attempt(attempt, fields, attempt_status)
    await session.execute(
        update(TrialModel)
        .where(TrialModel.id == trial_id)
        .values(**fields.trial_values(), finished_at=now())
    )
    await slots.release(
        await session.connection(), trial_ids=[trial_id], log_status=slot_log_status(fields.status)
    )


def slot_log_status(status: str) -> str:
    """How PGQueuer's log records the slot a trial of this status gave back."""
    if status == JobStatus.SUCCESS:
        return "successful"
    return "canceled" if status == JobStatus.CANCELLED else "exception"


@dataclass
class JudgeFields:
    """What an analysis or a verdict records of the judge (all None without one)."""

    judgement: dict[str, Any] | None = None
    model: str | None = None
    n_input_tokens: int | None = None
    n_output_tokens: int | None = None
    cost_usd: float | None = None
    error_message: str | None = None

    def apply(self, row: AnalysisModel | VerdictModel) -> None:
        for f in dataclasses.fields(self):
            setattr(row, f.name, getattr(self, f.name))


async def save_analysis(
    session: AsyncSession,
    *,
    trial_id: str,
    classification: str,
    summary: str,
    details: dict[str, Any],
    analyzer: str,
    judge: JudgeFields | None = None,
) -> None:
    """The trial's analysis: the rule-based classification, and the judge's when it judged (a
    judge that gave no usable answer leaves the analysis failed, the rule-based part standing)."""
    analysis = await session.get(AnalysisModel, trial_id)
    if analysis is None:
        analysis = AnalysisModel(trial_id=trial_id)
        session.add(analysis)
    judge = judge or JudgeFields()
    analysis.status = JobStatus.FAILED if judge.error_message else JobStatus.SUCCESS
    analysis.classification = classification
    analysis.summary = summary
    analysis.details = details
    analysis.analyzer = analyzer
    judge.apply(analysis)
    analysis.finished_at = now()


async def save_verdict(
    session: AsyncSession,
    *,
    task_id: str,
    summary: str,
    details: dict[str, Any],
    decider: str,
    judge: JudgeFields | None = None,
) -> None:
    verdict = await session.get(VerdictModel, task_id)
    if verdict is None:
        verdict = VerdictModel(task_id=task_id)
        session.add(verdict)
    judge = judge or JudgeFields()
    verdict.status = JobStatus.FAILED if judge.error_message else JobStatus.SUCCESS
    verdict.summary = summary
    verdict.details = details
    verdict.decider = decider
    judge.apply(verdict)
    verdict.finished_at = now()


async def cancel_unfinished_trials(session: AsyncSession, task_id: str) -> list[str]:
    await session.execute(
        update(TrialAttemptModel)
        .where(
            TrialAttemptModel.trial_id.in_(
                select(TrialModel.id).where(TrialModel.task_id == task_id)
            ),
            TrialAttemptModel.status == AttemptStatus.RUNNING,
        )
        .values(status=AttemptStatus.CANCELLED, finished_at=now())
    )
    rows = await session.execute(
        update(TrialModel)
        .where(
            TrialModel.task_id == task_id,
            TrialModel.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]),
        )
        .values(status=JobStatus.CANCELLED, finished_at=now(), outcome="cancelled")
        .returning(TrialModel.id)
    )
    return [r[0] for r in rows]


async def settle_abandoned_task(session: AsyncSession, task_id: str) -> None:
    """The task's workflow ended without finishing it (terminated, say): close its records."""
    task = await session.get(TaskModel, task_id)
    if task is None or task.status in TERMINAL_TASK_STATUSES:
        return
    await cancel_unfinished_trials(session, task_id)
    await set_task_status(
        session, task_id, TaskStatus.CANCELLED, "the task's workflow ended before the task finished"
    )


async def mark_workflows_started(
    conn: AsyncConnection | AsyncSession, task_ids: Iterable[str]
) -> None:
    ids = list(task_ids)
    if not ids:
        return
    await conn.execute(
        update(TaskModel)
        .where(TaskModel.id.in_(ids), TaskModel.workflow_started_at.is_(None))
        .values(workflow_started_at=func.now())
    )


async def unstarted_task_keys(
    session: AsyncSession,
    *,
    older_than_sec: float,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[tuple[datetime, str]]:
    """(created_at, id) of tasks older than ``older_than_sec`` that no workflow is known to
    have started, in that order, the next ``limit`` of them after ``after``."""
    query = select(TaskModel.created_at, TaskModel.id).where(
        TaskModel.workflow_started_at.is_(None),
        TaskModel.status == TaskStatus.PENDING,
        TaskModel.created_at < func.now() - timedelta(seconds=older_than_sec),
    )
    if after is not None:
        query = query.where(tuple_(TaskModel.created_at, TaskModel.id) > tuple_(*after))
    rows = await session.execute(query.order_by(TaskModel.created_at, TaskModel.id).limit(limit))
    return [(created_at, task_id) for created_at, task_id in rows.all()]


async def list_tasks(
    session: AsyncSession,
    *,
    status: str | None,
    experiment_id: str | None,
    user: str | None,
    limit: int,
    offset: int,
) -> tuple[list[TaskModel], int]:
    """A page of tasks, newest first, and the total matching the filters."""
    query = select(TaskModel)
    if status:
        query = query.where(TaskModel.status == status)
    if experiment_id:
        query = query.where(TaskModel.experiment_id == experiment_id)
    if user:
        query = query.where(TaskModel.user == user)
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    # Without their trials: the lists' figures are aggregated in SQL (oddish.db.stats).
    page = await session.execute(
        query.order_by(TaskModel.created_at.desc(), TaskModel.id).limit(limit).offset(offset)
    )
    return list(page.scalars().all()), total


async def list_experiments(session: AsyncSession) -> list[tuple[ExperimentModel, int]]:
    rows = await session.execute(
        select(ExperimentModel, func.count(TaskModel.id))
        .outerjoin(TaskModel, TaskModel.experiment_id == ExperimentModel.id)
        .group_by(ExperimentModel.id)
        .order_by(ExperimentModel.created_at.desc())
    )
    return [(experiment, count) for experiment, count in rows.all()]


async def experiment_row(session: AsyncSession, experiment_id: str) -> ExperimentModel:
    """The experiment alone (its tasks and trials are read in pages and aggregates)."""
    experiment = await session.get(ExperimentModel, experiment_id)
    if experiment is None:
        raise RecordNotFound(f"no experiment {experiment_id!r}")
    return experiment


async def experiment_task_ids(
    session: AsyncSession,
    experiment_id: str,
    *,
    unfinished: bool = False,
    with_retryable_trials: bool = False,
) -> list[str]:
    """Ids of the experiment's tasks, oldest first; with ``unfinished`` only those not in a
    terminal status, with ``with_retryable_trials`` only those with a trial that finished
    without passing. Raises RecordNotFound for an unknown experiment."""
    await experiment_row(session, experiment_id)
    query = select(TaskModel.id).where(TaskModel.experiment_id == experiment_id)
    if unfinished:
        query = query.where(TaskModel.status.not_in([s.value for s in TERMINAL_TASK_STATUSES]))
    if with_retryable_trials:
        query = query.where(
            select(TrialModel.id)
            .where(
                TrialModel.task_id == TaskModel.id,
                trial_result_sql().in_([r.value for r in RETRYABLE_RESULTS]),
            )
            .exists()
        )
    rows = await session.execute(query.order_by(TaskModel.created_at, TaskModel.id))
    return list(rows.scalars().all())


async def task_with_trial_refs(session: AsyncSession, task_id: str) -> TaskModel:
    """The task and its trial rows, without their attempts and analyses (what a workflow's
    input needs). Raises RecordNotFound."""
    task = (
        await session.execute(
            select(TaskModel).where(TaskModel.id == task_id).options(selectinload(TaskModel.trials))
        )
    ).scalar_one_or_none()
    if task is None:
        raise RecordNotFound(f"no task {task_id!r}")
    return task


async def verdicts_of(session: AsyncSession, task_ids: list[str]) -> dict[str, VerdictModel]:
    """The verdicts of the tasks that have one, without their per-agent/model details."""
    if not task_ids:
        return {}
    rows = await session.execute(
        select(VerdictModel)
        .where(VerdictModel.task_id.in_(task_ids))
        .options(defer(VerdictModel.details))
    )
    return {v.task_id: v for v in rows.scalars().all()}


# The trial columns of a page of an experiment's trials: what a list shows of each, without its
# spec, Harbor config, timings, attempts or analysis (the trial's own route has those).
TRIAL_PAGE_COLUMNS = (
    "id",
    "task_id",
    "index",
    "agent",
    "model",
    "queue_key",
    "environment",
    "status",
    "reward",
    "rewards",
    "outcome",
    "error_type",
    "error_message",
    "run_number",
    "n_input_tokens",
    "n_output_tokens",
    "cost_usd",
    "started_at",
    "finished_at",
)


async def experiment_trials_page(
    session: AsyncSession, experiment_id: str, *, after: tuple[str, int] | None, limit: int
) -> list[dict[str, Any]]:
    """The next ``limit`` trials of the experiment after (task id, index) ``after``, in that
    order: keyset paging, so each page costs the same however deep it is."""
    query = (
        select(*(getattr(TrialModel, c) for c in TRIAL_PAGE_COLUMNS))
        .join(TaskModel, TaskModel.id == TrialModel.task_id)
        .where(TaskModel.experiment_id == experiment_id)
    )
    if after is not None:
        query = query.where(
            TaskModel.id >= after[0], tuple_(TrialModel.task_id, TrialModel.index) > tuple_(*after)
        )
    rows = await session.execute(query.order_by(TrialModel.task_id, TrialModel.index).limit(limit))
    return [dict(row._mapping) for row in rows.all()]


async def delete_task_rows(session: AsyncSession, task_id: str) -> None:
    """Delete the task; Postgres cascades to its trials, attempts, analyses and verdict (one
    statement, no row loaded into Python)."""
    deleted = await session.execute(
        delete(TaskModel).where(TaskModel.id == task_id).returning(TaskModel.id)
    )
    if deleted.first() is None:
        raise RecordNotFound(f"no task {task_id!r}")


async def delete_experiment_rows(session: AsyncSession, experiment_id: str) -> None:
    """Delete the experiment and, by cascade in Postgres, everything recorded of its tasks."""
    deleted = await session.execute(
        delete(ExperimentModel)
        .where(ExperimentModel.id == experiment_id)
        .returning(ExperimentModel.id)
    )
    if deleted.first() is None:
        raise RecordNotFound(f"no experiment {experiment_id!r}")


async def get_trial_by_index(session: AsyncSession, task_id: str, index: int) -> TrialModel:
    trial = (
        await session.execute(
            select(TrialModel)
            .where(TrialModel.task_id == task_id, TrialModel.index == index)
            .options(selectinload(TrialModel.attempts), selectinload(TrialModel.analysis))
        )
    ).scalar_one_or_none()
    if trial is None:
        raise RecordNotFound(f"no trial {index} in task {task_id!r}")
    return trial


async def rename_experiment(session: AsyncSession, experiment_id: str, name: str) -> None:
    experiment = await session.get(ExperimentModel, experiment_id)
    if experiment is None:
        raise RecordNotFound(f"no experiment {experiment_id!r}")
    experiment.name = name


@dataclass(frozen=True)
class AttemptOutput:
    """An attempt's status and where its record says its output is."""

    status: str
    harbor_trial_dir: str | None


async def attempt_outputs(
    session: AsyncSession, trial_ids: list[str]
) -> dict[tuple[str, int], AttemptOutput]:
    """Every attempt of the trials, by (trial id, attempt number)."""
    if not trial_ids:
        return {}
    rows = await session.execute(
        select(
            TrialAttemptModel.trial_id,
            TrialAttemptModel.number,
            TrialAttemptModel.status,
            TrialAttemptModel.harbor_trial_dir,
        ).where(TrialAttemptModel.trial_id.in_(trial_ids))
    )
    return {(t, n): AttemptOutput(status, location) for t, n, status, location in rows}


async def judge_usage(
    session: AsyncSession, *, task_id: str | None = None, experiment_id: str | None = None
) -> dict[str, Any]:
    """What the judge cost a task or an experiment: its calls (analyses and verdicts it
    answered or failed), tokens and cost in USD (None when no call's cost is known)."""
    totals: dict[str, Any] = {
        "calls": 0,
        "errors": 0,
        "n_input_tokens": 0,
        "n_output_tokens": 0,
        "cost_usd": None,
    }
    for table, owner in ((AnalysisModel, TrialModel.task_id), (VerdictModel, VerdictModel.task_id)):
        query = select(
            func.count(table.model),
            func.count(table.error_message),
            func.coalesce(func.sum(table.n_input_tokens), 0),
            func.coalesce(func.sum(table.n_output_tokens), 0),
            func.sum(table.cost_usd),
        ).where(table.model.is_not(None))
        if table is AnalysisModel:
            query = query.join(TrialModel, TrialModel.id == AnalysisModel.trial_id)
        if task_id is not None:
            query = query.where(owner == task_id)
        if experiment_id is not None:
            query = query.join(TaskModel, TaskModel.id == owner).where(
                TaskModel.experiment_id == experiment_id
            )
        calls, errors, tokens_in, tokens_out, cost = (await session.execute(query)).one()
        totals["calls"] += calls
        totals["errors"] += errors
        totals["n_input_tokens"] += int(tokens_in or 0)
        totals["n_output_tokens"] += int(tokens_out or 0)
        if cost is not None:
            totals["cost_usd"] = (totals["cost_usd"] or 0.0) + float(cost)
    return totals


async def save_rule_analyses(
    session: AsyncSession, analyses: list[tuple[str, str, str, dict[str, Any]]], analyzer: str
) -> None:
    """Record (trial id, classification, summary, details) as the rule-based analyses of trials
    that have none yet, in one statement (a task without the judge gets them with its verdict)."""
    if not analyses:
        return
    finished = now()
    await session.execute(
        pg_insert(AnalysisModel)
        .values(
            [
                {
                    "trial_id": trial_id,
                    "status": JobStatus.SUCCESS.value,
                    "classification": classification,
                    "summary": summary,
                    "details": details,
                    "analyzer": analyzer,
                    "finished_at": finished,
                }
                for trial_id, classification, summary, details in analyses
            ]
        )
        .on_conflict_do_nothing(index_elements=["trial_id"])
    )
