"""The judge: the LLM's judgement of each analysis and verdict, with its model, tokens and cost

``tasks.analysis_model`` and ``tasks.verdict_model`` are the judge models a task asked for at
submission (null: no judge, only the rule-based classification and counts). Analyses and
verdicts keep the judge's answer as JSON (``judgement``) beside the rule-based fields, and what
it cost: ``model``, ``n_input_tokens``, ``n_output_tokens``, ``cost_usd``; ``error_message`` says
why a judgement is missing (a malformed answer, kept in ``judgement.raw_answer``). Rows written
before have nulls there and read as rule-based only.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JUDGED = ("analyses", "verdicts")


def upgrade() -> None:
    op.add_column("tasks", sa.Column("analysis_model", sa.String(length=200), nullable=True))
    op.add_column("tasks", sa.Column("verdict_model", sa.String(length=200), nullable=True))
    for table in JUDGED:
        op.add_column(table, sa.Column("judgement", postgresql.JSONB(), nullable=True))
        op.add_column(table, sa.Column("model", sa.String(length=200), nullable=True))
        op.add_column(table, sa.Column("n_input_tokens", sa.BigInteger(), nullable=True))
        op.add_column(table, sa.Column("n_output_tokens", sa.BigInteger(), nullable=True))
        op.add_column(table, sa.Column("cost_usd", sa.Float(), nullable=True))
        op.add_column(table, sa.Column("error_message", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in JUDGED:
        for column in (
            "error_message",
            "cost_usd",
            "n_output_tokens",
            "n_input_tokens",
            "model",
            "judgement",
        ):
            op.drop_column(table, column)
    op.drop_column("tasks", "verdict_model")
    op.drop_column("tasks", "analysis_model")
