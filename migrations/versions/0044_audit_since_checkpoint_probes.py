"""What the audit reads since a checkpoint is probed: each new row's claim or request, the wallets in key order.

A join of the new rows to xp_award_claims and xp_requests hashed every claim and request ever made, at every
audit_since_checkpoint and record_audit_checkpoint (the planner cannot tell how many rows are new); each new row now
probes its key (LATERAL ... LIMIT 1). The wallets with new rows are walked in key order, so that their balances',
checkpoints' and rows' index pages are read once (pyxp.audited_wallets). record_audit_checkpoint, an INSERT that
PostgreSQL runs without parallel workers, walks the wallets in one call, not in eight slices one after the other.

Revision ID: 0044
Revises: 0043
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0044"
down_revision = "0043"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0044_audit_since_checkpoint_probes.sql")


def downgrade() -> None:
    _execute("0044_audit_since_checkpoint_probes.downgrade.sql")
