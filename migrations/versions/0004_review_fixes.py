"""Review fixes of 0002 and 0003, as a revision of their own.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Every call about one completion, like every call about one client email, serialises on
its row in subject_locks (client_email_locks goes); a campaign creation locks its registry
row first; a vote whose key text a 0001 key of another vote holds takes a /2 key;
audit() reports identities stored before 0002 that read otherwise today; U+2800 is
refused; the change feed's horizon leaves out transactions of other databases. 0002 and
0003 as they landed already hold these fixes: on a database they built this revision
changes nothing; it brings a database that ran earlier texts of 0002/0003 to the same
state. So its downgrade has nothing to undo (0002's downgrade refuses what 0001 would
misread).

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0004_review_fixes.sql")


def downgrade() -> None:
    _execute("0004_review_fixes.downgrade.sql")
