"""The ledger partitioned by month; generic awards claimed in xp_award_claims (issue 15).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26

pyxp.xp_transactions becomes a table partitioned by range of created_at (one
partition per calendar month, UTC, created ahead by
pyxp.create_ledger_partitions; a default partition). An existing ledger's
table becomes its partition of every row before the month after its last row
(its indexes rebuilt); its generic awards' claims are copied into the new
table xp_award_claims (the ledger can no longer hold a unique index on their
keys' hashes). The TRUNCATE trigger goes to every partition; event triggers
refuse DETACH and DROP of a partition (when a superuser migrates). The
downgrade copies the rows back into one table.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0015_partitioned_ledger.sql")


def downgrade() -> None:
    _execute("0015_partitioned_ledger.downgrade.sql")
