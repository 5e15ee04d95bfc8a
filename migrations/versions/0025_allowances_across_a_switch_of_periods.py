"""An allowance whose periods move (a ruleset in another timezone, or with another cap per)
starts its current period from what that period already used.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-27

xp_cap_usage kept each period's usage under the period's start in the zone it was counted in:
switched to another zone, an allowance's day there started from nothing although the old
zone's day, overlapping it, had used it all (a hostile test, 2026-11-27). xp_cap_usage gains
seeded_xp, seeded_per, seeded_zone and seeded_at: what gains counted in other periods used of
a period, counted at the activation (pyxp.seed_cap_usage, new; and here, for the active
ruleset's current periods). A reversal frees its gain there too (pyxp.freed_allowances
replaces pyxp.freed_allowance); audit() checks the seeds and that no capped gain applied more
than was left in the period that governed it (pyxp.exceeded_allowances, pyxp.ledger_cap_seeds,
pyxp.capped_gains, new). An allowance holds the gains counted under its name and those of its
actions (a rule moved into a group brings what it used: pyxp.capped_allowances,
pyxp.moved_allowances, xp_cap_usage.seeded_by), and under caps a row is dated no earlier than
its ruleset's activation (an award begun before a switch got a fresh allowance).

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0025_allowances_across_a_switch_of_periods.sql")


def downgrade() -> None:
    _execute("0025_allowances_across_a_switch_of_periods.downgrade.sql")
