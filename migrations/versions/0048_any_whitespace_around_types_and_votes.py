"""Campaign types and vote decisions are trimmed of whitespace of any kind, as wallets and ids are.

btrim took spaces only: B2C followed by a tab or a no-break space was PX003, VALID followed by a newline PX008
(a hostile test).

Revision ID: 0048
Revises: 0047
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0048"
down_revision = "0047"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0048_any_whitespace_around_types_and_votes.sql")


def downgrade() -> None:
    _execute("0048_any_whitespace_around_types_and_votes.downgrade.sql")
