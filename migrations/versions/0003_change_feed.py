"""The change feed (SPEC 11): pyxp.changes, feed groups on ledger rows, wake-ups.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Adds xp_transactions.feed_xid and xp_balances.last_feed_xid (nullable: rows
written before keep NULL and are fed by id), the index the feed reads, the
two writers that set them, pyxp.changes(after_cursor, max_rows, wallet), and
the rate-limited NOTIFY pyxp_changes trigger. See sql/11_changes.sql for why
the feed is exactly-once.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0003_change_feed.sql")


def downgrade() -> None:
    _execute("0003_change_feed.downgrade.sql")
