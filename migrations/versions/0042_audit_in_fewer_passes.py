"""The audit's checks of single rows read the ledger in fewer passes (pyxp.row_problems).

Each row is checked against its rule in one pass (three up to 0041), and the ids held twice are grouped once
(a parallel plan grouped every id in each of its processes). The findings are 0041's, and one more: a row whose
rule cannot be evaluated on its metadata (an input edited to a string) is an amount_mismatch, where audit()
failed with 22P02 without naming it (pyxp.audited_rule_amount).

Revision ID: 0042
Revises: 0041
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0042"
down_revision = "0041"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0042_audit_in_fewer_passes.sql")


def downgrade() -> None:
    _execute("0042_audit_in_fewer_passes.downgrade.sql")
