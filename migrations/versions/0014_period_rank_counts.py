"""Exact ranks on the boards of the current periods, from counts (issues 11 and 13).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26

New table xp_period_rank_counts: per period, period start and period XP, how
many balances hold it, kept by the writer in the statement that sets the
balance (a slot per backend, as xp_rank_counts). pyxp.wallet_rank for a
current period sums the counts above the wallet's XP instead of counting
the board's index. Counted from the balances here; the downgrade drops the
table and restores 0013's functions.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0014_period_rank_counts.sql")


def downgrade() -> None:
    _execute("0014_period_rank_counts.downgrade.sql")
