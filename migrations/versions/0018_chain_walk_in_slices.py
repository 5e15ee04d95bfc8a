"""The chain walk in parallel slices (issue 15).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-26

pyxp.chain_problems runs the chain checks in eight slices of the wallets
(pyxp.chain_problems_between, new), which the caller's plan may hand to
parallel workers; the full audit streams each slice (the rows' index merged
with the slice's wallets, pyxp.wallets_between, new) instead of probing the
index once per wallet. Functions only: no table changes, nothing rewritten.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0018_chain_walk_in_slices.sql")


def downgrade() -> None:
    _execute("0018_chain_walk_in_slices.downgrade.sql")
