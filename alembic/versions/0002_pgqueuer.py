"""slot table: PGQueuer 1.6's schema

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from oddish.db.pgqueuer_schema import INSTALL_SQL, UNINSTALL_SQL

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _execute_script(sql: str) -> None:
    # asyncpg prepares every statement SQLAlchemy sends, and a prepared statement cannot hold
    # several commands; the driver's simple-query path can, inside the migration's transaction.
    raw = op.get_bind().connection.dbapi_connection
    raw.run_async(lambda conn: conn.execute(sql))


def upgrade() -> None:
    _execute_script(INSTALL_SQL)


def downgrade() -> None:
    _execute_script(UNINSTALL_SQL)
