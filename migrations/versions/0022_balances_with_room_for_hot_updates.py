"""Balances keep half of each page free, so that a new curve's recalculation writes no
index entry (a regression of the bench's recalculation target).

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-27

pyxp.xp_balances gets fillfactor 50 and is rewritten with it (CLUSTER on its primary key,
then the clustering mark removed: the table keeps no preferred order). Every update of a
balance by recalculate_levels() (run by install_ruleset when it activates a ruleset) changes
no indexed column; with room on the row's page it is a HOT update: no entry in the seven
indexes of the table. Measured at 1M balances: 77-101 s with full pages, 7-9 s.
The rewrite holds an ACCESS EXCLUSIVE lock on xp_balances while it runs (every award waits):
11.5 s at 1M balances. No function changes.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0022_balances_with_room_for_hot_updates.sql")


def downgrade() -> None:
    _execute("0022_balances_with_room_for_hot_updates.downgrade.sql")
