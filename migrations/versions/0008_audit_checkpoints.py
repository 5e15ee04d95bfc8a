"""Audit checkpoints and each wallet's order of application (issue 15).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

Every ledger row gets wallet_seq (its position in its wallet's history) and
every balance last_wallet_seq; rows already in the ledger are numbered in id
order. pyxp.audit walks each wallet's chain once (an index-only scan of the
new wallet index); pyxp.audit_since_checkpoint and
pyxp.record_audit_checkpoint verify what was written since the last
checkpoint. The downgrade drops the checkpoints and the numbering.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0008_audit_checkpoints.sql")


def downgrade() -> None:
    _execute("0008_audit_checkpoints.downgrade.sql")
