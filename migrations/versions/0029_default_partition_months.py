"""A month whose rows went to the default partition gets its own partition.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-27

A month nobody created a partition for in time had its rows in the default partition, which no
archive takes: its month, and any later month holding a reversal of one of its rows, could never
be archived (a known limit since a hostile test). pyxp.create_ledger_partitions now creates that
month's partition and moves its rows into it, unchanged; pyxp.archive_ledger_partitions refuses
(PX030) while such rows lie in the range it would archive; pyxp.ledger_unmoved refuses (40001) a
read whose snapshot is older than such a move.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0029_default_partition_months.sql")


def downgrade() -> None:
    _execute("0029_default_partition_months.downgrade.sql")
