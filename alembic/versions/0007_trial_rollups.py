"""trial_rollups: every task's trials counted and summed, kept up to date by Postgres

The experiment and task-list views read an experiment of 100k trials. Aggregating its trial rows
on each read cost 70 ms per query on two cores, whatever the indexes. ``trial_rollups`` holds,
per task x agent x model x status x outcome x result, how many trials there are and the sums the
views need (rewards, tokens, cost, durations). An experiment is then a few thousand rows at most.

Statement-level triggers on ``trials`` keep it exact: each INSERT, UPDATE or DELETE statement
adds what its new rows bring and takes away what its old rows had, grouped, as one upsert in key
order (concurrent writers lock the same rows in the same order). A row's ``experiment_id`` is
its task's, copied when the row is made; deleting a task deletes its rows (a foreign key).
``oddish_trial_result`` is ``oddish.outcomes.trial_result`` in SQL (a test compares them).

Sums of floats that go up and down keep rounding residue of a few ulps; a NaN reward is counted
apart (``nan_rewards``) instead of summed, so one NaN does not stay in a sum after its trial is
retried. Rows whose trials went to 0 stay (readers skip them) until their task is deleted.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEY = ("task_id", "agent", "model", "status", "outcome", "result")

TRIAL_RESULT = """
CREATE OR REPLACE FUNCTION oddish_trial_result(status text, outcome text, reward float8)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN status NOT IN ('cancelled', 'success', 'failed') THEN NULL
        WHEN status = 'cancelled' OR outcome = 'cancelled' THEN 'cancelled'
        WHEN outcome IN ('infrastructure_error', 'verifier_error')
             OR (status = 'failed' AND reward IS NULL) THEN 'error'
        WHEN reward IS NULL THEN 'unscored'
        -- NaN equals NaN and sorts above every number in Postgres: a NaN reward is a failure.
        WHEN reward = 'NaN' OR reward <= 0 THEN 'failed'
        WHEN reward >= 1.0 THEN 'passed'
        ELSE 'partial'
    END
$$
"""

# What one trial row contributes, signed: +1 for a row a statement made, -1 for one it removed.
CONTRIBUTION = """
SELECT {sign} AS sign, task_id, agent, model, status, outcome, reward, n_input_tokens,
       n_cache_tokens, n_output_tokens, cost_usd, started_at, finished_at
FROM {rows}
"""

# Only the rows whose counted columns changed: most updates of a trial (its config, timings,
# output location) change none, and then nothing is written.
CHANGED = """
SELECT o.id FROM old_rows o JOIN new_rows n USING (id)
WHERE (o.task_id, o.agent, o.model, o.status, o.outcome, o.reward, o.n_input_tokens,
       o.n_cache_tokens, o.n_output_tokens, o.cost_usd, o.started_at, o.finished_at)
      IS DISTINCT FROM
      (n.task_id, n.agent, n.model, n.status, n.outcome, n.reward, n.n_input_tokens,
       n.n_cache_tokens, n.n_output_tokens, n.cost_usd, n.started_at, n.finished_at)
"""

DELTA = """
SELECT c.task_id, c.agent, c.model, c.status, c.outcome,
       oddish_trial_result(c.status, c.outcome, c.reward) AS result,
       sum(c.sign) AS trials,
       coalesce(sum(c.sign) FILTER (WHERE c.reward >= 1.0 AND c.reward <> 'NaN'), 0) AS passed,
       coalesce(sum(c.sign) FILTER (WHERE c.reward = 'NaN'), 0) AS nan_rewards,
       coalesce(sum(c.sign * c.reward) FILTER (WHERE c.reward <> 'NaN'), 0) AS score_sum,
       coalesce(sum(c.sign * c.n_input_tokens), 0) AS n_input_tokens,
       coalesce(sum(c.sign * c.n_cache_tokens), 0) AS n_cache_tokens,
       coalesce(sum(c.sign * c.n_output_tokens), 0) AS n_output_tokens,
       coalesce(sum(c.sign * c.cost_usd), 0) AS cost_usd,
       coalesce(sum(c.sign) FILTER (WHERE c.cost_usd IS NOT NULL), 0) AS cost_trials,
       coalesce(sum(c.sign) FILTER (WHERE c.finished_at - c.started_at IS NOT NULL), 0)
           AS timed_trials,
       coalesce(sum(c.sign * date_part('epoch', c.finished_at - c.started_at)), 0)
           AS duration_sec
FROM ({changes}) AS c
GROUP BY 1, 2, 3, 4, 5, 6
"""

SUMS = (
    "trials",
    "passed",
    "nan_rewards",
    "score_sum",
    "n_input_tokens",
    "n_cache_tokens",
    "n_output_tokens",
    "cost_usd",
    "cost_trials",
    "timed_trials",
    "duration_sec",
)

UPSERT = """
INSERT INTO trial_rollups AS r (experiment_id, {key}, {sums})
SELECT t.experiment_id, {d_key}, {d_sums}
FROM ({delta}) AS d JOIN tasks t ON t.id = d.task_id
ORDER BY {d_key}
ON CONFLICT ({key}) DO UPDATE SET {added}
"""

# A deleted trial's task may be going too (a cascade): only rows that still exist are updated,
# and no task is looked up.
SUBTRACT = """
UPDATE trial_rollups AS r SET {subtracted}
FROM ({delta}) AS d
WHERE r.task_id = d.task_id AND r.agent = d.agent AND r.status = d.status
  AND r.model IS NOT DISTINCT FROM d.model AND r.outcome IS NOT DISTINCT FROM d.outcome
  AND r.result IS NOT DISTINCT FROM d.result
"""


def _delta(changes: str) -> str:
    return DELTA.format(changes=changes)


def _upsert(changes: str) -> str:
    return UPSERT.format(
        key=", ".join(KEY),
        sums=", ".join(SUMS),
        d_key=", ".join(f"d.{k}" for k in KEY),
        d_sums=", ".join(f"d.{s}" for s in SUMS),
        delta=_delta(changes),
        added=", ".join(f"{s} = r.{s} + EXCLUDED.{s}" for s in SUMS),
    )


def _function(name: str, body: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body};
    RETURN NULL;
END
$$
"""


FUNCTIONS = {
    "oddish_trial_rollups_insert": _upsert(CONTRIBUTION.format(sign=1, rows="new_rows")),
    "oddish_trial_rollups_update": _upsert(
        CONTRIBUTION.format(sign=1, rows=f"new_rows WHERE id IN ({CHANGED})")
        + " UNION ALL "
        + CONTRIBUTION.format(sign=-1, rows=f"old_rows WHERE id IN ({CHANGED})")
    ),
    "oddish_trial_rollups_delete": SUBTRACT.format(
        subtracted=", ".join(f"{s} = r.{s} - d.{s}" for s in SUMS),
        delta=_delta(CONTRIBUTION.format(sign=1, rows="old_rows")),
    ),
}

TRIGGERS = {
    "INSERT": ("oddish_trial_rollups_insert", "REFERENCING NEW TABLE AS new_rows"),
    "UPDATE": (
        "oddish_trial_rollups_update",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    ),
    "DELETE": ("oddish_trial_rollups_delete", "REFERENCING OLD TABLE AS old_rows"),
}


def upgrade() -> None:
    op.create_table(
        "trial_rollups",
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column(
            "task_id",
            sa.String(64),
            sa.ForeignKey("tasks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("agent", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(32)),
        sa.Column("result", sa.String(32)),
        sa.Column("trials", sa.BigInteger, nullable=False),
        sa.Column("passed", sa.BigInteger, nullable=False),
        sa.Column("nan_rewards", sa.BigInteger, nullable=False),
        sa.Column("score_sum", sa.Float, nullable=False),
        sa.Column("n_input_tokens", sa.BigInteger, nullable=False),
        sa.Column("n_cache_tokens", sa.BigInteger, nullable=False),
        sa.Column("n_output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("cost_trials", sa.BigInteger, nullable=False),
        sa.Column("timed_trials", sa.BigInteger, nullable=False),
        sa.Column("duration_sec", sa.Float, nullable=False),
        sa.UniqueConstraint(*KEY, name="uq_trial_rollups_key", postgresql_nulls_not_distinct=True),
    )
    op.create_index("ix_trial_rollups_experiment_id", "trial_rollups", ["experiment_id"])
    op.execute(TRIAL_RESULT)
    for name, body in FUNCTIONS.items():
        op.execute(_function(name, body))
    for event, (function, referencing) in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {function} AFTER {event} ON trials {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    # The trials recorded so far, as if each had just been inserted.
    op.execute(_upsert(CONTRIBUTION.format(sign=1, rows="trials")))


def downgrade() -> None:
    for function, _ in TRIGGERS.values():
        op.execute(f"DROP TRIGGER IF EXISTS {function} ON trials")
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table("trial_rollups")
    op.execute("DROP FUNCTION IF EXISTS oddish_trial_result(text, text, float8)")
