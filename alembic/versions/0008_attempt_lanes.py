"""attempt_lanes: the slot lane an attempt ran in

A ``run_trial`` activity may go on, on the slot its trial gives back, to run the trials that slot
is handed to (a slot lane). Each attempt it opens records the lane's id, so that the activity's
next attempt, after its worker died, learns from the records which trials the lane ran and which
one it was running; and so that a lane Temporal gave up on can be settled.

``slot_lanes`` fences a lane: the latest attempt of its activity (or fail_trial, which settles
it) enters it before reading its trials, under the time that attempt was scheduled (later for
every attempt, a reset's too), and an earlier attempt still running somewhere (cut off from
Temporal, say) can then no longer open a trial in it. Its trials are always those the reader
sees. A row stays until its task is deleted: an earlier attempt must find it to be fenced.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("trial_attempts", sa.Column("lane", sa.String(64), nullable=True))
    op.create_table(
        "slot_lanes",
        sa.Column("id", sa.String(64), primary_key=True),
        # Its task's: deleting the task deletes its lanes.
        sa.Column(
            "task_id",
            sa.String(64),
            sa.ForeignKey("tasks.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        # The scheduled time of the attempt holding it, in microseconds since the epoch.
        sa.Column("holder", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("slot_lanes")
    op.drop_column("trial_attempts", "lane")
