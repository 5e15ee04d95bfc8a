"""The writer's transaction-local settings name their transaction by a mark no session can set ahead of it.

Its id and start time (pyxp.transaction_mark), not its id alone: on a quiet server the next id is
predictable, and a session-level SET of pyxp.appending_rows or pyxp.transaction_rows to it, left on a
pooled server connection, refused the next client's valid award (PX034) or batch (PX023) there (a
hostile test).

Revision ID: 0047
Revises: 0046
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0047"
down_revision = "0046"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0047_transaction_marks.sql")


def downgrade() -> None:
    _execute("0047_transaction_marks.downgrade.sql")
