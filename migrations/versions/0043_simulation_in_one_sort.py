"""The what-if of a ruleset reads the ledger once and sorts its rows once (pyxp.simulated_rows).

Each row's amount under the candidate is computed in one pass (pyxp.candidate_rows, pyxp.replayed_rows), and one
sort by wallet gives the capped gains' cuts and each wallet's total; 0042 materialized the rows twice and sorted
them four times. An input that is not a number in a row's metadata (an owner's edit) is refused with PX004 naming
the row, where the simulation failed with 22P02 (pyxp.simulated_amount).

Revision ID: 0043
Revises: 0042
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0043"
down_revision = "0042"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0043_simulation_in_one_sort.sql")


def downgrade() -> None:
    _execute("0043_simulation_in_one_sort.downgrade.sql")
