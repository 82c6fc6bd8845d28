"""tasks.workflow_started_at: which tasks Temporal has a workflow for

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("workflow_started_at", sa.DateTime(timezone=True)))
    # A task past pending was recorded by its workflow, so it has one. Pending tasks stay unset:
    # workers ask Temporal about each once, and mark those it knows.
    op.execute(
        "UPDATE tasks SET workflow_started_at = coalesce(started_at, created_at) "
        "WHERE status <> 'pending'"
    )
    op.create_index(
        "ix_tasks_unstarted",
        "tasks",
        ["created_at", "id"],
        postgresql_where=sa.text("workflow_started_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_unstarted", table_name="tasks")
    op.drop_column("tasks", "workflow_started_at")
