"""tasks.archive_sha256: task archives in storage; tasks.task_path becomes their location

A task submitted from now on is an archive in storage (``oddish.storage``): ``task_path`` holds
its storage key (``tasks/<task_id>/<sha256>.tar.gz``) and ``archive_sha256`` the sha256 of its
bytes, checked by every worker that fetches it. Rows of tasks stored before keep their absolute
local path and a null sha256, and are read from disk as before (``task_store.is_legacy_location``).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("archive_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Tasks stored as archives cannot be read without their sha256 by older code either way:
    # their task_path is a storage key, not a directory.
    op.drop_column("tasks", "archive_sha256")
