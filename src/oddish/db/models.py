"""SQLAlchemy models of the canonical records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from oddish.statuses import JobStatus, TaskStatus

JsonDict = JSONB()


class Base(DeclarativeBase):
    # SQLAlchemy reads it from the class.
    type_annotation_map = {dict[str, Any]: JsonDict, list[Any]: JsonDict}  # noqa: RUF012


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class ExperimentModel(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = _created()

    tasks: Mapped[list[TaskModel]] = relationship(back_populates="experiment")


class TaskModel(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index(
            "ix_tasks_unstarted",
            "created_at",
            "id",
            postgresql_where=text("workflow_started_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True, nullable=False
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    # Where the task's files are: the storage key of its archive (``tasks/<id>/<sha256>.tar.gz``),
    # or, for a task stored before archives went to storage, an absolute local directory
    # (``task_store.is_legacy_location``). The column keeps its old name.
    task_path: Mapped[str] = mapped_column(Text, nullable=False)
    # sha256 of the archive's bytes, checked by each worker that fetches it; null for a legacy
    # local directory.
    archive_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default=TaskStatus.PENDING, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    user: Mapped[str | None] = mapped_column(String(255))
    # Whether the task asked for the judge (an LLM's analysis of each trial and verdict); the
    # rule-based classification and counts are made either way.
    run_analysis: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # The judge's models (LiteLLM names), fixed at submission; null without the judge.
    analysis_model: Mapped[str | None] = mapped_column(String(200))
    verdict_model: Mapped[str | None] = mapped_column(String(200))
    # The client's idempotency key: the same key never creates a second task.
    submission_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(128), nullable=False)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set once Temporal has the task's workflow. Unset on an older task means its submitter
    # died before starting it (or before saying so): workers look only at those.
    workflow_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    experiment: Mapped[ExperimentModel] = relationship(back_populates="tasks")
    trials: Mapped[list[TrialModel]] = relationship(
        back_populates="task", order_by="TrialModel.index", cascade="all, delete-orphan"
    )
    verdict: Mapped[VerdictModel | None] = relationship(
        back_populates="task", cascade="all, delete-orphan"
    )


class TrialModel(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("task_id", "index"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), index=True, nullable=False
    )
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    agent: Mapped[str] = mapped_column(String(255), nullable=False)
    model: Mapped[str | None] = mapped_column(String(255))
    queue_key: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    environment: Mapped[str] = mapped_column(String(255), nullable=False)
    # The submitted spec and the Harbor TrialConfig of the latest attempt, as JSON.
    spec: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    harbor_config: Mapped[dict[str, Any] | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.PENDING, index=True)
    reward: Mapped[float | None] = mapped_column(Float)
    rewards: Mapped[dict[str, Any] | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Phase -> {"started_at", "finished_at"} as Harbor reports them.
    timings: Mapped[dict[str, Any] | None] = mapped_column()
    n_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    n_cache_tokens: Mapped[int | None] = mapped_column(BigInteger)
    n_output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    # Where the latest attempt's Harbor output is: its storage prefix
    # (tasks/<task>/trials/<trial>/attempt-N/), or an absolute local path for attempts recorded
    # before outputs went to storage (oddish.task_store.is_legacy_location).
    harbor_trial_dir: Mapped[str | None] = mapped_column(Text)
    # Bumped by each retry of the trial as a whole (a new run), never by Temporal's own retries.
    run_number: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    task: Mapped[TaskModel] = relationship(back_populates="trials")
    attempts: Mapped[list[TrialAttemptModel]] = relationship(
        back_populates="trial", order_by="TrialAttemptModel.number", cascade="all, delete-orphan"
    )
    analysis: Mapped[AnalysisModel | None] = relationship(
        back_populates="trial", cascade="all, delete-orphan"
    )


class TrialAttemptModel(Base):
    """One execution of a trial; retries add rows and never overwrite earlier ones."""

    __tablename__ = "trial_attempts"
    __table_args__ = (UniqueConstraint("trial_id", "number"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    trial_id: Mapped[str] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), index=True, nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    run_number: Mapped[int] = mapped_column(Integer, nullable=False)
    temporal_attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    # The slot lane (one run_trial activity running trial after trial on one slot) it ran in.
    lane: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    reward: Mapped[float | None] = mapped_column(Float)
    rewards: Mapped[dict[str, Any] | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The attempt's output location: a storage prefix, or a legacy absolute path (as the trial's).
    harbor_trial_dir: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    trial: Mapped[TrialModel] = relationship(back_populates="attempts")


class SlotLaneModel(Base):
    """A slot lane's fence: the attempt of its activity that may open trials in it (by the time
    it was scheduled, in microseconds since the epoch)."""

    __tablename__ = "slot_lanes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), index=True, nullable=False
    )
    holder: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AnalysisModel(Base):
    __tablename__ = "analyses"

    trial_id: Mapped[str] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.PENDING)
    classification: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column()
    analyzer: Mapped[str | None] = mapped_column(String(128))
    # The judge's answer (oddish.judge) beside the rule-based fields, and what it cost; null
    # without the judge. error_message says why a judgement is missing.
    judgement: Mapped[dict[str, Any] | None] = mapped_column()
    model: Mapped[str | None] = mapped_column(String(200))
    n_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    n_output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    trial: Mapped[TrialModel] = relationship(back_populates="analysis")


class VerdictModel(Base):
    __tablename__ = "verdicts"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.PENDING)
    summary: Mapped[str | None] = mapped_column(Text)
    # Counts, pass rate and mean reward, overall and per agent/model.
    details: Mapped[dict[str, Any] | None] = mapped_column()
    decider: Mapped[str | None] = mapped_column(String(128))
    # The judge's answer (oddish.judge) beside the rule-based fields, and what it cost; null
    # without the judge. error_message says why a judgement is missing.
    judgement: Mapped[dict[str, Any] | None] = mapped_column()
    model: Mapped[str | None] = mapped_column(String(200))
    n_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    n_output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    task: Mapped[TaskModel] = relationship(back_populates="verdict")


class QueueLimitModel(Base):
    """Per queue key concurrency limit; keys without a row use the default limit."""

    __tablename__ = "queue_limits"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    max_concurrent: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


# Per task x agent x model x status x outcome x result: its trials counted and summed. Written
# only by Postgres (the triggers of migration 0007 on ``trials``), read by ``oddish.db.stats``.
# A NaN reward is counted in ``nan_rewards`` and left out of ``score_sum``; ``cost_usd`` sums the
# ``cost_trials`` trials that reported a cost. Rows at 0 trials are stale: readers skip them.
trial_rollups = Table(
    "trial_rollups",
    Base.metadata,
    Column("experiment_id", String(64), nullable=False, index=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("agent", String(255), nullable=False),
    Column("model", String(255)),
    Column("status", String(32), nullable=False),
    Column("outcome", String(32)),
    Column("result", String(32)),
    Column("trials", BigInteger, nullable=False),
    Column("passed", BigInteger, nullable=False),
    Column("nan_rewards", BigInteger, nullable=False),
    Column("score_sum", Float, nullable=False),
    Column("n_input_tokens", BigInteger, nullable=False),
    Column("n_cache_tokens", BigInteger, nullable=False),
    Column("n_output_tokens", BigInteger, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("cost_trials", BigInteger, nullable=False),
    Column("timed_trials", BigInteger, nullable=False),
    Column("duration_sec", Float, nullable=False),
    UniqueConstraint(
        "task_id",
        "agent",
        "model",
        "status",
        "outcome",
        "result",
        name="uq_trial_rollups_key",
        postgresql_nulls_not_distinct=True,
    ),
)
