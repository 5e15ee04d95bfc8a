"""The audit's unsliced checks beside the chain walk's slices (issue 15).

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-26

pyxp.unsliced_problems (new): the checks not cut into slices (ranks, wallets'
forms, caps; since a checkpoint the new rows' single-row checks), as two calls
that pyxp.chain_problems runs beside its eight slices under the same Gather.
Functions only: no table changes, nothing rewritten.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0019_unsliced_checks_beside_the_walk.sql")


def downgrade() -> None:
    _execute("0019_unsliced_checks_beside_the_walk.downgrade.sql")
