"""Capped awards' CPU; rank counts' slots leased per transaction; a write from a ledger trigger refused.

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-28

PostgreSQL reads a CHECK constraint's stored expression again at every statement that writes its
table: xp_cap_usage's seed check, written out, cost each capped award about 3 % of its CPU. It is
now one call of pyxp.cap_usage_seed_consistent (the same rule). The writer's planning statement
aggregates its arrays from a subquery sorted in call order, where each array_agg(... ORDER BY)
sorted its own input.

Two hostile findings (applications' transactions): a prepared transaction kept the rank counts'
rows of its backend locked, and every later award on that backend (behind a pooler, another
client's) waited for it: the slot is now leased per transaction (an advisory lock never waited
for). An application's trigger on the ledger that awarded read the balance before the call that
fired it had updated it, and that call then wrote over the award's balance: refused (PX034).

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
