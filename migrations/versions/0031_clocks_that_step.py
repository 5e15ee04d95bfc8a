"""A hostile test of a server clock that is not monotonic: seeds counted by position, months not remade.

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-27

A switch's seed of a capped allowance counts the gains that existed then by their position in the
wallet (xp_cap_usage.seeded_seq), and every later period of the new zone holding gains; the audit
and a reversal's freeing count the same gains. pyxp.create_ledger_partitions makes no month before
the archive's horizon; pyxp.wake_feed_listeners claims a slot behind the last one after the clock
stepped back.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0031_clocks_that_step.sql")


def downgrade() -> None:
    _execute("0031_clocks_that_step.downgrade.sql")
