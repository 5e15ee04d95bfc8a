"""A past period's board holds the instants of that period, also where the clocks go back at
local midnight.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-27

Where a zone puts its clocks back from 01:00 to 00:00 (Atlantic/Azores, America/Havana, ...),
local midnight happens twice and date_trunc(kind, at, zone) gives the second: it stays the
period's key, but leaderboard, wallet_rank and period_xp now read a past period's rows from
its first instant (pyxp.period_first_instant, new), not from its key, so the hour between
the two midnights is on its own day's board only. Functions only.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0024_periods_at_a_twice_struck_midnight.sql")


def downgrade() -> None:
    _execute("0024_periods_at_a_twice_struck_midnight.downgrade.sql")
