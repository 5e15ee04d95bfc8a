"""A hostile test of failovers and point-in-time recovery: the ledger follows its timeline.

Revision ID: 0033
Revises: 0032
Create Date: 2026-11-28

A point-in-time recovery, or a standby promoted before it had received its primary's last
transactions, starts a new timeline that hands out again the transaction ids and sequence values of
the history it left: feed consumers holding a lost row's cursor skipped the new rows below it, and a
reversal of a lost award's id reversed another wallet's row. The ledger now names its timeline
(pyxp.ledger_timeline); the first write on a new one adopts it (pyxp.follow_timeline); every adoption
that may leave a history behind moves the ledger's ids and sequences a margin past what it holds and
records it (xp_ledger_forks), and pyxp.changes refuses a cursor in between (PX033). This revision
records the timeline at its end.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0033_timelines_left_behind.sql")


def downgrade() -> None:
    _execute("0033_timelines_left_behind.downgrade.sql")
