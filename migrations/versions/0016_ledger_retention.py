"""Retention: old partitions archived after an audit checkpoint, balances proven from openings (issue 15).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26

pyxp.archive_ledger_partitions(archived_before) (owner only) detaches the
ledger's partitions ending at or before archived_before, once an audit
checkpoint verified their rows, into schema pyxp_archive. New tables keep
what the proofs need: xp_ledger_archives, xp_wallet_openings,
xp_archived_originals, xp_archived_cap_usage; xp_requests gets archive_id.
The audit walks each wallet from its opening. The downgrade is refused once
anything was archived.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0016_ledger_retention.sql")


def downgrade() -> None:
    _execute("0016_ledger_retention.downgrade.sql")
