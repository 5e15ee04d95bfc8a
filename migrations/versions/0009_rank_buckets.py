"""Exact all-time ranks from rank buckets (issue 11, item 3).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26

The all-time board is cut into buckets of consecutive positions whose sizes
pyxp.xp_rank_counts keeps (the writer moves a balance between buckets when
its total changes): pyxp.wallet_rank('all') sums the buckets before a
wallet's instead of counting every balance above it. Every board orders
ties by wallet byte by byte (COLLATE "C"). The buckets are cut from the
balances present. The downgrade drops them.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0009_rank_buckets.sql")


def downgrade() -> None:
    _execute("0009_rank_buckets.downgrade.sql")
