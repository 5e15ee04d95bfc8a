"""Periods and caps (SPEC 12).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

Rulesets gain a timezone and rules an optional cap (per day, week, month or
year, shared by a group). Balances gain their latest period of each kind and
its XP, kept by the writer for the boards of the current periods and filled
here from the existing ledger; xp_cap_usage records what capped gains used.
leaderboard and wallet_rank take a period and an instant; period_xp is new.
The downgrade refuses while the active ruleset has caps or another zone than
UTC.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0006_periods_caps.sql")


def downgrade() -> None:
    _execute("0006_periods_caps.downgrade.sql")
