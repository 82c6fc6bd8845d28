"""Indexes for reading experiments of 100k trials from aggregates

``ix_trials_task_status`` covers what the experiment and task-list views aggregate (trials by
task and status with agent, model, outcome and reward; the trial id for joining analyses):
Postgres answers them with an index-only scan of the experiment's trials instead of a scan of
every trial of every experiment, so a read costs the size of the experiment, not of the
database. ``ix_analyses_judged`` holds only the analyses the judge answered (a small part of
them), for the judge's usage of an experiment.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_trials_task_status",
        "trials",
        ["task_id", "status"],
        postgresql_include=["agent", "model", "outcome", "reward", "id"],
    )
    op.create_index(
        "ix_analyses_judged",
        "analyses",
        ["trial_id"],
        postgresql_include=["n_input_tokens", "n_output_tokens", "cost_usd", "error_message"],
        postgresql_where=sa.text("model IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_analyses_judged", table_name="analyses")
    op.drop_index("ix_trials_task_status", table_name="trials")
