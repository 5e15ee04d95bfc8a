"""Initial pyxp schema: roles, ledger tables, levels, rules, award engine, flows, reads, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Executes its own frozen SQL file (0001_initial.sql, a snapshot of sql/*.sql
at this revision). Never edit a revision after it has landed: write a new one,
and update sql/ to match (tests compare both schemas).
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Raw psycopg execute: the file holds many statements and % / : characters
    # that SQLAlchemy's text() would treat as parameters.
    op.get_bind().connection.driver_connection.execute(
        Path(__file__).with_suffix(".sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    # Roles are cluster-wide and may serve other databases: they stay.
    op.get_bind().connection.driver_connection.execute("DROP SCHEMA pyxp CASCADE")
