"""Canonical records in Postgres: models, sessions, and the queries over them."""

from oddish.db.connection import get_engine, get_session
from oddish.db.migrations import upgrade as init_db
from oddish.db.models import (
    AnalysisModel,
    ExperimentModel,
    QueueLimitModel,
    TaskModel,
    TrialAttemptModel,
    TrialModel,
    VerdictModel,
)

__all__ = [
    "AnalysisModel",
    "ExperimentModel",
    "QueueLimitModel",
    "TaskModel",
    "TrialAttemptModel",
    "TrialModel",
    "VerdictModel",
    "get_engine",
    "get_session",
    "init_db",
]
