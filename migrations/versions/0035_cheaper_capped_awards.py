"""A capped award's CPU: the usage rows' seed check as one function call, the writer's arrays from one sort.

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-28

PostgreSQL reads a CHECK constraint's stored expression again at every statement that writes its
table: xp_cap_usage's seed check, written out, cost each capped award about 3 % of its CPU. It is
now one call of pyxp.cap_usage_seed_consistent (the same rule). The writer's planning statement
aggregates its arrays from a subquery sorted in call order, where each array_agg(... ORDER BY)
sorted its own input.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0035_cheaper_capped_awards.sql")


def downgrade() -> None:
    _execute("0035_cheaper_capped_awards.downgrade.sql")
