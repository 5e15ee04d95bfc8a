"""Three hostile tests' findings, and a month without its partition moved into one.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-27

A month nobody created a partition for in time had its rows in the default partition, which no
archive takes. pyxp.create_ledger_partitions now creates that month's partition and moves its
rows into it, unchanged; pyxp.archive_ledger_partitions refuses (PX030) while such rows lie in
the range it would archive; pyxp.ledger_unmoved refuses (40001) a read older than such a move.

The audit against an owner who edits the tables and makes every sum agree again: a generic
award's amount against its rule's formula, a rule without inputs' digest against the row's
action and wallet, a reversal's key, a row without a rule, each ruleset's tables against its
definition (or, for a ruleset an older install_ruleset wrote otherwise, against the digest of
its tables at this revision: xp_rulesets_as_installed), the campaigns' registry, a checkpoint
naming no row, the archived rows counted by the openings. A batch's row count is its
transaction's only.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0029_audited_edits_and_default_months.sql")


def downgrade() -> None:
    _execute("0029_audited_edits_and_default_months.downgrade.sql")
