"""attempt_lanes: the slot lane an attempt ran in

A ``run_trial`` activity may go on, on the slot its trial gives back, to run the trials that slot
is handed to (a slot lane). Each attempt it opens records the lane's id, so that the activity's
next attempt, after its worker died, learns from the records which trials the lane ran and which
one it was running; and so that a lane Temporal gave up on can be settled.

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


def downgrade() -> None:
    op.drop_column("trial_attempts", "lane")
