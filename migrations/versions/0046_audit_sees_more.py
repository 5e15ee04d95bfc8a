"""The audit sees more of what an owner can change unseen: a request's kept key or inputs, a forged adjustment.

Found by a hostile test: the key or inputs a request keeps (an archived submission's wallet edited made the
completer's outcome refused and another wallet paid); a RULES_ADJUSTMENT row naming a ruleset never applied
retroactively, or another wallet; a feed position beyond the next transaction id (a balance's last_feed_xid held
the wallet's rows back from the feed; a checkpoint's snapshot_xmin hid the rows since from the incremental
audit); rank counts in writers' slots of a bucket with no start.

Revision ID: 0046
Revises: 0045
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0046"
down_revision = "0045"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0046_audit_sees_more.sql")


def downgrade() -> None:
    _execute("0046_audit_sees_more.downgrade.sql")
