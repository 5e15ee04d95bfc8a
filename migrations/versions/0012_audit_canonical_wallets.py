"""The full audit skips the normalisation check of canonical 0x wallets (issue 15, item 1).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26

pyxp.audit's identity_not_normalised check ran two PL/pgSQL functions on
every balance; a wallet of 0x and 40 lower-case hex digits reads the same
under them, so only the others are checked. Functions only; the downgrade
restores 0011's audit().

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0012_audit_canonical_wallets.sql")


def downgrade() -> None:
    _execute("0012_audit_canonical_wallets.downgrade.sql")
