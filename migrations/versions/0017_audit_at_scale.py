"""The full audit at scale: period boards' counts by index ranges, claims by a parallel join (issue 15).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-26

pyxp.rank_problems counts each bucket of a period board's cut values with
one index-only range (pyxp.period_board_range, new) instead of one probe per
balance; pyxp.row_problems joins the generic rows to their claims (a join
PostgreSQL 15 can run in parallel, unlike the FULL join before) and looks
for claims without a row only when the counts say one exists; the audit's
read-only helpers are marked PARALLEL SAFE. Functions only: no table
changes, nothing rewritten.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0017_audit_at_scale.sql")


def downgrade() -> None:
    _execute("0017_audit_at_scale.downgrade.sql")
