"""pyxp.changes() refuses cursors no feed handed out: a group no transaction can have, or one held back.

Past the first epoch, a transaction id whose low 32 bits are 0, 1 or 2 is never handed out; pg_xact_status()
reads it as NULL or 'committed' whatever its epoch. pyxp.transaction_ended took such a group's transaction
for ended, and a cursor such as 4294967296 << 24, ahead of the feed, read an empty page for good, with no
PX023 (a newcomer's review). Such a group is now not ended: the cursor is refused.

Also refused (a hostile test): a cursor whose group is at or above the reader's horizon while a transaction of
this database at or below it runs, the reader's own included (pyxp.running_here_up_to, read afresh). No feed
hands out such a cursor; below the snapshot's xmax it was accepted, and once the running transaction committed,
its rows were skipped for good.

Revision ID: 0039
Revises: 0038
Create Date: 2026-11-28

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0039"
down_revision = "0038"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0039_cursors_of_no_transaction.sql")


def downgrade() -> None:
    _execute("0039_cursors_of_no_transaction.downgrade.sql")
