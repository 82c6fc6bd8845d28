"""Library entry points: submit a task, read it back, read the queues. The API calls these too."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from oddish.archives import ArchiveError, extract_task_archive
from oddish.config import get_settings
from oddish.contracts import TaskWorkflowInput, TrialRef, TrialRetryPolicy
from oddish.db import records, slots, stats
from oddish.db.connection import autocommit_connection, get_session
from oddish.db.models import (
    AnalysisModel,
    ExperimentModel,
    TaskModel,
    TrialModel,
    VerdictModel,
)
from oddish.experiment import generate_experiment_name
from oddish.ids import new_id
from oddish.judge.models import JudgeModels, judge_models
from oddish.outcomes import trial_result
from oddish.queue_keys import DEFAULT_LIMIT_KEY, limit_key
from oddish.schemas import TaskSubmission
from oddish.started_marks import STARTED_MARKS
from oddish.statuses import JobStatus, TaskStatus
from oddish.storage import get_storage, task_archive_key
from oddish.task_store import (
    StoredArchive,
    discard_task_archives,
    pack_task_dir,
    store_task_archive,
)
from oddish.temporal_gateway import TemporalUnavailable, start_task_workflow
from oddish.trial_stats import (
    groups_by_agent_model,
    scores_of_trials,
    stats_of_groups,
    task_matrix,
    task_trial_summary,
    usage_by_agent_model,
    usage_of_groups,
)
from oddish.workflows import workflow_id_for_task

log = logging.getLogger(__name__)

# A task's submission and its archive, stored under the task's id.
PreparedTask = tuple[TaskSubmission, StoredArchive]

# The tasks GET /experiments/{id} shows by default, and the trials a page of its trials holds:
# bounded, so a 100k-trial experiment answers as fast as a small one.
EXPERIMENT_TASKS_PAGE = 100
EXPERIMENT_TRIALS_PAGE = 5000
# A task archive packed at submission stays in memory up to this size, then goes to a temporary
# file: a task of a dataset is small, and a large one should not hold the API's memory.
_PACK_IN_MEMORY_BYTES = 16 * 1024 * 1024


def retry_policy_from_settings() -> TrialRetryPolicy:
    s = get_settings()
    return TrialRetryPolicy(
        max_attempts=s.trial_max_attempts,
        initial_interval_sec=s.trial_retry_initial_interval_sec,
        max_interval_sec=s.trial_retry_max_interval_sec,
        heartbeat_timeout_sec=s.trial_heartbeat_timeout_sec,
        start_to_close_timeout_sec=s.trial_start_to_close_timeout_sec,
    )


@dataclasses.dataclass(frozen=True)
class InsertedTask:
    """A task as just inserted, as its workflow's input reads it: building ORM objects instead
    cost a submission more than the rest of its bookkeeping."""

    id: str
    experiment_id: str
    name: str
    priority: int
    run_analysis: bool


@dataclasses.dataclass(frozen=True)
class InsertedTrial:
    id: str
    index: int
    agent: str
    model: str | None
    queue_key: str
    environment: str
    status: str
    run_number: int


def workflow_input(
    task: TaskModel | InsertedTask,
    trials: Sequence[TrialModel | InsertedTrial],
    *,
    rerun: set[str] | None = None,
) -> TaskWorkflowInput:
    """The workflow's input; with ``rerun``, a new run for those trials, the others settled."""
    rerun_trials = [t for t in trials if rerun is not None and t.id in rerun]
    return TaskWorkflowInput(
        task_id=task.id,
        experiment_id=task.experiment_id,
        task_name=task.name,
        priority=task.priority,
        # The analysis stage always runs: the rule-based classification and counts, free; the
        # judge too when the task asked for it (its models are on the task).
        run_analysis=True,
        trials=[
            TrialRef(t.id, t.index, t.agent, t.model, t.queue_key, t.environment)
            for t in sorted(trials, key=lambda t: t.index)
        ],
        retry_policy=retry_policy_from_settings(),
        run_numbers={t.id: t.run_number + 1 for t in rerun_trials},
        settled={} if rerun is None else {t.id: t.status for t in trials if t.id not in rerun},
        analysis_heartbeat_timeout_sec=get_settings().analysis_heartbeat_timeout_sec,
        batch_size=get_settings().trial_batch_size,
        analyse_each_trial=task.run_analysis,
    )


def trial_values(task_id: str, submission: TaskSubmission) -> list[dict[str, Any]]:
    """The trial rows of a submission, as column values, numbered in the order of its specs.
    The trials of one config share its spec's dict (read only): a sweep of thousands of trials
    dumps each config's spec once."""
    values: list[dict[str, Any]] = []
    for spec, n_trials in submission.config_specs():
        dumped = spec.model_dump(mode="json")
        for _ in range(n_trials):
            values.append(
                {
                    "id": new_id("trial"),
                    "task_id": task_id,
                    "index": len(values),
                    "agent": spec.agent,
                    "model": spec.model,
                    "queue_key": spec.queue_key,
                    "environment": spec.environment,
                    "spec": dumped,
                    "status": JobStatus.PENDING.value,
                    "run_number": 1,
                }
            )
    return values


@dataclasses.dataclass(frozen=True)
class CreatedTask:
    """A submitted task as the API answers it, known without reading it back."""

    id: str
    experiment_id: str
    trials_count: int
    # Why its workflow did not start (Temporal unreachable): the workers start it later.
    not_started: WorkflowNotStartedYet | None = None


async def create_task(submission: TaskSubmission, *, client: Client | None) -> str:
    """Record the task and its trials, then start its workflow. Returns the task id.

    Without a client (Temporal not connected yet) the task is recorded and WorkflowNotStartedYet
    raised: the workers start its workflow once Temporal answers."""
    created = await submit_task(submission, client=client)
    if created.not_started is not None:
        raise created.not_started
    # A library caller's event loop may end right after: its mark is written before returning.
    await STARTED_MARKS.flush()
    return created.id


async def submit_task(submission: TaskSubmission, *, client: Client | None) -> CreatedTask:
    """:func:`create_task`, answering with what was recorded; a workflow that could not be
    started is told in ``not_started`` instead of raised."""
    # Refused before anything is stored: the judge was asked for and no model is set.
    if submission.run_analysis:
        judge_models(get_settings())
    return await submit_prepared(functools.partial(_with_archive, submission), client=client)


async def submit_prepared(
    prepare: Callable[[str], PreparedTask], *, client: Client | None
) -> CreatedTask:
    """Record and start a task whose submission ``prepare(task_id)`` makes and whose archive it
    stores under ``task_id``: in one thread, as both read and write files. For a task known only
    once its files are unpacked (POST /tasks/run), ``prepare`` checks and stores them at once.

    A submission key already used (a resent request) answers with the task it made. That is
    found when the insert breaks the key's unique constraint, not looked up first: a resent
    request is rare, a first one pays no extra round trip."""
    task_id = new_id("task")
    task: TaskModel | InsertedTask
    trials: Sequence[TrialModel | InsertedTrial]
    try:
        submission, stored = await _to_thread_to_the_end(prepare, task_id)
        judge = judge_models(get_settings()) if submission.run_analysis else None
        # Twice at most: the experiment it names may be deleted between its lookup and the
        # insert; the second try makes it again.
        for attempt in range(2):
            try:
                task, trials = await _record(submission, task_id, stored, judge)
                break
            except IntegrityError:
                key = submission.submission_key
                existing = await _task_of_submission_key(key) if key else None
                if existing is None:
                    if attempt == 1 or not key:
                        raise
                    continue  # not the key: its experiment, deleted meanwhile
                # Submitted before with this key (or by a request beside this one): that task.
                await _discard_archives(task_id)
                task, trials = existing, existing.trials
                break
    except BaseException:
        # Whatever failed (or cancelled the submission), no archive of it stays in storage.
        await asyncio.shield(_discard_archives(task_id))
        raise
    try:
        await _start_recorded(client, task, trials)
    except WorkflowNotStartedYet as exc:
        return CreatedTask(task.id, task.experiment_id, len(trials), not_started=exc)
    return CreatedTask(task.id, task.experiment_id, len(trials))


async def _record(
    submission: TaskSubmission, task_id: str, stored: StoredArchive, judge: JudgeModels | None
) -> tuple[InsertedTask, list[InsertedTrial]]:
    """Insert the task and its trials (and its experiment, if new) in one statement."""
    # A name given where an id goes joins the experiment of that name.
    ref = submission.experiment_id
    new_experiment = (
        ref or new_id("exp"),
        submission.experiment_name or ref or generate_experiment_name(),
    )
    task: dict[str, Any] = {
        "id": task_id,
        "name": submission.task_name,
        # The task's location: the storage key of its archive.
        "task_path": stored.key,
        "archive_sha256": stored.sha256,
        "status": TaskStatus.PENDING.value,
        "priority": submission.priority,
        "user": submission.user,
        "run_analysis": submission.run_analysis,
        "analysis_model": judge.analysis if judge else None,
        "verdict_model": judge.verdict if judge else None,
        "submission_key": submission.submission_key,
        "workflow_id": workflow_id_for_task(task_id),
    }
    trials = trial_values(task_id, submission)
    async with autocommit_connection() as conn:
        task["experiment_id"] = await records.insert_submitted_task(
            conn, task, trials, experiment_ref=ref, new_experiment=new_experiment
        )
    # Known as inserted, without reading them back: for the workflow's input.
    inserted = InsertedTask(
        id=task_id,
        experiment_id=task["experiment_id"],
        name=submission.task_name,
        priority=submission.priority,
        run_analysis=submission.run_analysis,
    )
    return inserted, [
        InsertedTrial(**{field.name: values[field.name] for field in _TRIAL_FIELDS})
        for values in trials
    ]


_TRIAL_FIELDS = dataclasses.fields(InsertedTrial)


async def _task_of_submission_key(key: str) -> TaskModel | None:
    async with get_session() as session:
        existing = await records.task_by_submission_key(session, key)
        if existing is None:
            return None
        return await records.get_task(session, existing.id, with_trials=True)


def _with_archive(submission: TaskSubmission, task_id: str) -> PreparedTask:
    return submission, store_task_files(submission, task_id)


def store_task_files(submission: TaskSubmission, task_id: str) -> StoredArchive:
    """Store the submission's task as task ``task_id``'s archive. Copying, packing and uploading
    a task can take seconds: call it off the event loop, which serves requests and trials."""
    return _pack_and_store(
        submission.task_path, task_id, submission.docker_image, submission.packed
    )


async def _to_thread_to_the_end(
    prepare: Callable[[str], PreparedTask], task_id: str
) -> PreparedTask:
    """``prepare(task_id)`` in a thread. Cancelled, it waits for the thread to end, so that what
    the thread stored is there to be deleted."""
    preparing = asyncio.ensure_future(asyncio.to_thread(prepare, task_id))
    try:
        return await asyncio.shield(preparing)
    except asyncio.CancelledError:
        await asyncio.wait({preparing})
        with contextlib.suppress(BaseException):
            preparing.result()  # its failure, if any, is not this submission's news any more
        raise


def _pack_and_store(
    source: Path | None, task_id: str, docker_image: str | None, packed: Path | None = None
) -> StoredArchive:
    """Store the task's archive. A task kept as it is (no ``docker_image``) is stored from its
    ``packed`` archive when it has one (an upload's), else packed straight from its directory,
    in memory up to ``_PACK_IN_MEMORY_BYTES``: the same bytes as packing a copy
    (``store_task_archive``), without writing and deleting that copy's tree, which was most of a
    submission's cost on a slow disk. A link or special file in the task (which the copy follows
    or refuses in its own way) takes the copying path."""
    if packed is not None:
        return _store_packed_file(packed, task_id, docker_image)
    assert source is not None  # TaskSubmission._task_given
    if docker_image is not None:
        return store_task_archive(source, task_id, docker_image=docker_image)
    with tempfile.SpooledTemporaryFile(max_size=_PACK_IN_MEMORY_BYTES) as spooled:
        packed_now = cast(BinaryIO, spooled)  # a binary file in all but its declared type
        try:
            pack_task_dir(source, packed_now)
        except ArchiveError:
            return store_task_archive(source, task_id)
        packed_now.seek(0)
        return _store_packed(packed_now, task_id)


def _store_packed_file(packed: Path, task_id: str, docker_image: str | None) -> StoredArchive:
    """Store a task known only by its packed archive (an upload's); with ``docker_image`` its
    files are unpacked to be rewritten and packed again."""
    try:
        with open(packed, "rb") as archive:
            if docker_image is None:
                return _store_packed(archive, task_id)
            with tempfile.TemporaryDirectory(prefix=f"oddish-{task_id}-") as work:
                task_dir = Path(work) / "task"
                # Packed by this server from files it checked: its own limits are no bound.
                extract_task_archive(
                    archive,
                    task_dir,
                    max_archive_bytes=2**62,
                    max_unpacked_bytes=2**62,
                    max_members=2**31,
                )
                return store_task_archive(task_dir, task_id, docker_image=docker_image)
    except FileNotFoundError:
        raise records.RecordNotFound(
            "the uploaded task was deleted while it was being submitted; upload it again"
        ) from None


def _store_packed(archive: BinaryIO, task_id: str) -> StoredArchive:
    """Store a packed archive, read from its start, under the task's key for its sha256."""
    digest = hashlib.sha256()
    while chunk := archive.read(1024 * 1024):
        digest.update(chunk)
    archive.seek(0)
    key = task_archive_key(task_id, digest.hexdigest())
    info = get_storage().put_fileobj(key, archive)
    return StoredArchive(key=key, sha256=digest.hexdigest(), size=info.size)


async def _discard_archives(task_id: str) -> None:
    """Delete what a submission that was not recorded stored (nothing, when it failed before
    storing); a storage failure now is logged, not raised over the submission's own error."""
    try:
        await asyncio.to_thread(discard_task_archives, task_id)
    except Exception as exc:
        log.warning("could not delete the archive of unrecorded task %s: %s", task_id, exc)


async def _start_recorded(
    client: Client | None,
    task: TaskModel | InsertedTask,
    trials: Sequence[TrialModel | InsertedTrial],
) -> None:
    """Start the workflow of a recorded task (again, for a resent submission: a no-op then)."""
    try:
        if client is None:
            raise TemporalUnavailable("Temporal is not connected")
        await start_task_workflow(client, workflow_input(task, trials))
    except Exception as exc:
        raise WorkflowNotStartedYet(task.id, exc) from exc
    await mark_workflow_started(task.id)


class WorkflowNotStartedYet(Exception):
    """The task is recorded, but Temporal did not take its workflow (unreachable, say). Nothing
    is lost: the workers start it once Temporal answers. Submitting again would run it twice."""

    def __init__(self, task_id: str, cause: BaseException) -> None:
        self.task_id = task_id
        super().__init__(
            f"task {task_id} is recorded, but its workflow could not be started yet "
            f"({type(cause).__name__}: {cause}); the workers start it once Temporal answers "
            f"(within ODDISH_SLOT_LEASE_SEC, {get_settings().slot_lease_sec:.0f} s); "
            "do not submit it again"
        )


async def mark_workflow_started(task_id: str) -> None:
    """Tell the workers not to look for this task's workflow. Only an optimisation: unmarked,
    a worker asks Temporal about it once and marks it. Written shortly after, with the marks of
    the submissions beside it: the submission does not wait for it."""
    STARTED_MARKS.mark(task_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def trial_dict(trial: TrialModel) -> dict[str, Any]:
    analysis = trial.analysis
    return {
        "id": trial.id,
        "task_id": trial.task_id,
        "index": trial.index,
        "agent": trial.agent,
        "model": trial.model,
        "queue_key": trial.queue_key,
        "environment": trial.environment,
        **{f.name: getattr(trial, f.name) for f in dataclasses.fields(records.TrialResultFields)},
        "result": trial_result(trial.status, trial.outcome, trial.reward),
        "started_at": _iso(trial.started_at),
        "finished_at": _iso(trial.finished_at),
        "attempts": [
            {
                "number": a.number,
                "run_number": a.run_number,
                "temporal_attempt": a.temporal_attempt,
                "worker": a.worker,
                "status": a.status,
                **{name: getattr(a, name) for name in records.ATTEMPT_RESULT_FIELDS},
                "started_at": _iso(a.started_at),
                "finished_at": _iso(a.finished_at),
            }
            for a in trial.attempts
        ],
        "analysis": None
        if analysis is None
        else {
            "status": analysis.status,
            # The rule-based classification (the outcome); the judge's is in "judge".
            "classification": analysis.classification,
            "summary": analysis.summary,
            "details": analysis.details,
            "analyzer": analysis.analyzer,
            "finished_at": _iso(analysis.finished_at),
            "judge": judge_dict(analysis),
        },
    }


def judge_dict(row: AnalysisModel | VerdictModel) -> dict[str, Any] | None:
    """What the judge said of a trial or a task (None when it was not asked): its answer's
    fields, the model, tokens, cost, and the error when it gave no usable answer."""
    if row.model is None:
        return None
    return {
        **(row.judgement or {}),
        "model": row.model,
        "n_input_tokens": row.n_input_tokens,
        "n_output_tokens": row.n_output_tokens,
        "cost_usd": row.cost_usd,
        "error": row.error_message,
    }


def _task_fields(task: TaskModel) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "experiment_id": task.experiment_id,
        "status": task.status,
        "priority": task.priority,
        "user": task.user,
        "created_at": _iso(task.created_at),
        "finished_at": _iso(task.finished_at),
    }


async def task_summaries(
    session: AsyncSession,
    tasks: list[TaskModel],
    *,
    counts: Iterable[stats.TaskStatusCount] | None = None,
) -> list[dict[str, Any]]:
    """The tasks without their trials' details (for lists): trial counts by status and the
    mean reward of finished trials, aggregated by Postgres, and each task's verdict in brief.
    ``counts`` are the counts of (at least) these tasks when the caller has them already (an
    experiment's view, for its matrix too); otherwise Postgres counts them."""
    ids = [t.id for t in tasks]
    by_task: dict[str, list[stats.TaskStatusCount]] = {t: [] for t in ids}
    for count in await stats.task_status_counts(session, ids) if counts is None else counts:
        if count.task_id in by_task:
            by_task[count.task_id].append(count)
    verdicts = await records.verdicts_of(session, ids)
    return [
        {
            **_task_fields(task),
            "error_message": task.error_message,
            **task_trial_summary(by_task[task.id]),
            "verdict": _verdict_brief(verdicts.get(task.id)),
        }
        for task in tasks
    ]


def _verdict_brief(verdict: VerdictModel | None) -> dict[str, Any] | None:
    """What a list shows of a verdict: its status, the counts' summary and the judge's say."""
    if verdict is None:
        return None
    return {"status": verdict.status, "summary": verdict.summary, "judge": judge_dict(verdict)}


async def list_tasks(
    *,
    status: str | None = None,
    experiment_id: str | None = None,
    user: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of tasks, newest first; ``next_offset`` is None on the last page."""
    async with get_session() as session:
        if experiment_id:
            experiment_id = await records.experiment_id_for(session, experiment_id) or experiment_id
        tasks, total = await records.list_tasks(
            session,
            status=status,
            experiment_id=experiment_id,
            user=user,
            limit=limit,
            offset=offset,
        )
        summaries = await task_summaries(session, tasks)
    return {
        "tasks": summaries,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if offset + limit < total else None,
    }


async def list_experiments() -> list[dict[str, Any]]:
    """Every experiment, newest first, with its tasks and its trials in figures: how many, how
    many ended, got a reward (scored), passed and ended in an error or were cancelled, pass@1
    (passed over scored, as in ``scores``), and the agents' cost."""
    async with get_session() as session:
        return await listed_experiments(session, await records.list_experiments(session))


async def listed_experiments(
    session: AsyncSession, rows: list[tuple[ExperimentModel, int]]
) -> list[dict[str, Any]]:
    """Experiments with their task counts (``rows``) as GET /experiments lists them."""
    totals = await stats.experiment_totals(session, [e.id for e, _ in rows])
    listed = []
    for e, n in rows:
        figures = totals.get(e.id) or stats.ExperimentTotals(e.id, 0, 0, 0, 0, 0, None)
        listed.append(
            {
                "id": e.id,
                "name": e.name,
                "created_at": _iso(e.created_at),
                "tasks_count": n,
                "trials_count": figures.trials,
                "trials_finished": figures.finished,
                "trials_scored": figures.scored,
                "trials_passed": figures.passed,
                "trials_errored": figures.errored,
                "pass_at_1": figures.passed / figures.scored if figures.scored else None,
                "cost_usd": figures.cost_usd,
            }
        )
    return listed


async def get_experiment(
    experiment_id: str, *, tasks_limit: int = EXPERIMENT_TASKS_PAGE, tasks_offset: int = 0
) -> dict[str, Any]:
    """The experiment (by id, or by name), one page of its tasks (newest first, as /tasks
    pages them), and over all its trials and per agent/model: trials, pass rate, mean reward,
    statuses, scores, the agents' usage, and the page's tasks x agent/model matrix. The figures
    come from aggregates of Postgres of a few hundred rows however many trials (per agent/model
    x status x outcome x result, per agent/model x task shape for pass@k); the page's tasks are
    counted on their own: no trial row is read into Python."""
    async with get_session() as session:
        experiment_id = await records.experiment_id_for(session, experiment_id) or experiment_id
        experiment = await records.experiment_row(session, experiment_id)
        # The judge's usage joins the experiment's analyses to its trials: the longest read,
        # run on a connection of its own beside the others.
        judge_usage = asyncio.create_task(_experiment_judge_usage(experiment.id))
        try:
            tasks, total = await records.list_tasks(
                session,
                status=None,
                experiment_id=experiment.id,
                user=None,
                limit=tasks_limit,
                offset=tasks_offset,
            )
            groups = await stats.experiment_agent_model_groups(session, experiment.id)
            shapes = await stats.experiment_task_shapes(session, experiment.id)
            page_counts = await stats.task_status_counts(session, [t.id for t in tasks])
            return {
                "id": experiment.id,
                "name": experiment.name,
                "created_at": _iso(experiment.created_at),
                "tasks": await task_summaries(session, tasks, counts=page_counts),
                "tasks_total": total,
                "tasks_offset": tasks_offset,
                "tasks_next_offset": (
                    tasks_offset + tasks_limit if tasks_offset + tasks_limit < total else None
                ),
                "overall": stats_of_groups(groups, shapes),
                "by_agent_model": groups_by_agent_model(groups, shapes),
                "agent_usage": usage_of_groups(groups),
                "agent_usage_by_agent_model": usage_by_agent_model(groups),
                # The page's tasks by agent/model, from the counts of their summaries.
                "matrix": task_matrix(page_counts),
                "judge_usage": await judge_usage,
            }
        finally:
            # An error above leaves it unawaited: it goes, with its connection.
            judge_usage.cancel()


async def _experiment_judge_usage(experiment_id: str) -> dict[str, Any]:
    async with get_session() as session:
        return (await stats.experiment_judge_usage(session, experiment_id)).as_dict()


async def get_experiment_trials(
    experiment_id: str, *, after: str | None = None, limit: int = EXPERIMENT_TRIALS_PAGE
) -> dict[str, Any]:
    """One page of the experiment's trials in brief, ordered by task then index; ``next_after``
    (None on the last page) is the cursor of the next one."""
    cursor = _trial_cursor(after) if after else None
    async with get_session() as session:
        experiment_id = await records.experiment_id_for(session, experiment_id) or experiment_id
        experiment = await records.experiment_row(session, experiment_id)
        rows = await records.experiment_trials_page(
            session, experiment.id, after=cursor, limit=limit
        )
    last = rows[-1] if len(rows) == limit else None
    return {
        "experiment_id": experiment.id,
        "trials": [
            {
                **row,
                "result": trial_result(row["status"], row["outcome"], row["reward"]),
                "started_at": _iso(row["started_at"]),
                "finished_at": _iso(row["finished_at"]),
            }
            for row in rows
        ],
        "next_after": None if last is None else f"{last['task_id']}:{last['index']}",
    }


class BadCursor(ValueError):
    """An ``after`` that no page of the list gave."""


def _trial_cursor(after: str) -> tuple[str, int]:
    task_id, _, index = after.rpartition(":")
    if not task_id or not index.isdigit():
        raise BadCursor(f"not a cursor of this list: {after!r}")
    return task_id, int(index)


async def rename_experiment(experiment_id: str, name: str) -> None:
    async with get_session() as session:
        await records.rename_experiment(session, experiment_id, name)
        await session.commit()


async def get_trial(trial_id: str) -> dict[str, Any]:
    async with get_session() as session:
        return trial_dict(await records.get_trial(session, trial_id))


async def get_trial_by_index(task_id: str, index: int) -> dict[str, Any]:
    async with get_session() as session:
        return trial_dict(await records.get_trial_by_index(session, task_id, index))


async def attempt_outputs(trial_ids: list[str]) -> dict[tuple[str, int], records.AttemptOutput]:
    """Each attempt of the trials: its status and its recorded output location."""
    async with get_session() as session:
        return await records.attempt_outputs(session, trial_ids)


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """What a task was made of: its stored archive, name and experiment."""

    location: str
    sha256: str | None
    name: str
    experiment_id: str


async def get_task_source(task_id: str) -> TaskSource:
    """Raises RecordNotFound."""
    async with get_session() as session:
        task = await records.get_task(session, task_id)
        return TaskSource(task.task_path, task.archive_sha256, task.name, task.experiment_id)


async def get_task_location(task_id: str) -> str:
    """Where the task's files are kept: its archive's storage key, or (a task stored before
    archives went to storage) the absolute path of its copy. Raises RecordNotFound."""
    async with get_session() as session:
        return (await records.get_task(session, task_id)).task_path


async def get_task_with_trials(task_id: str) -> dict[str, Any]:
    """The task, its trials (with attempts and analyses) and its verdict. Raises RecordNotFound."""
    async with get_session() as session:
        task = await records.get_task(session, task_id, with_trials=True)
        verdict = task.verdict
        return {
            **_task_fields(task),
            "run_analysis": task.run_analysis,
            "workflow_id": task.workflow_id,
            "error_message": task.error_message,
            "started_at": _iso(task.started_at),
            "trials": [trial_dict(t) for t in task.trials],
            "scores": scores_of_trials(task.trials),
            "verdict": None
            if verdict is None
            else {
                "status": verdict.status,
                "summary": verdict.summary,
                "details": verdict.details,
                "decider": verdict.decider,
                "finished_at": _iso(verdict.finished_at),
                "judge": judge_dict(verdict),
            },
            "analysis_model": task.analysis_model,
            "verdict_model": task.verdict_model,
            "judge_usage": await records.judge_usage(session, task_id=task_id),
        }


async def get_queue_stats() -> dict[str, dict[str, int]]:
    """Per queue key: trials waiting for a slot, trials holding one, and the limit in force."""
    default_limit = await get_default_limit()
    async with get_session() as session:
        rows = await slots.queue_stats(await session.connection(), default_limit)
    return {
        r["key"]: {"waiting": r["waiting"], "running": r["running"], "limit": r["limit"]}
        for r in rows
        if r["key"] != DEFAULT_LIMIT_KEY
    }


async def get_default_limit() -> int:
    async with get_session() as session:
        stored = (await slots.limits(await session.connection())).get(DEFAULT_LIMIT_KEY)
    return stored or get_settings().default_model_concurrency


async def apply_limits(overrides: dict[str, int]) -> None:
    """Write start-up limits into Postgres, where every worker reads them."""
    settings = get_settings()
    async with get_session() as session:
        conn = await session.connection()
        stored = await slots.limits(conn)
        # An explicit ODDISH_DEFAULT_MODEL_CONCURRENCY wins; otherwise keep what is stored.
        if (
            "default_model_concurrency" in settings.model_fields_set
            or DEFAULT_LIMIT_KEY not in stored
        ):
            await slots.set_limit(conn, DEFAULT_LIMIT_KEY, settings.default_model_concurrency)
        for key, limit in {**settings.model_concurrency, **overrides}.items():
            await slots.set_limit(conn, limit_key(key), limit)
        await session.commit()


async def set_queue_limit(queue_key: str, limit: int) -> str:
    """Set a queue key's limit; returns the key it applies to (a model's, normalised)."""
    if limit < 1:
        raise ValueError("a concurrency limit must be at least 1")
    key = limit_key(queue_key)
    if not key:
        raise ValueError("a queue key cannot be empty")
    async with get_session() as session:
        await slots.set_limit(await session.connection(), key, limit)
        await session.commit()
    return key
