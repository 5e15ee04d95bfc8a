"""Identities, injective keys, completion ownership, isolation, sizes, no advisory locks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Issue 9 (never wrong where it is deployed) and the SQL side of issue 10:
wallets and emails NFKC-normalised with invisible characters refused; vote
keys injective (keys stored by 0001 still replay); a completion's outcome
tied to its submission, an unknown campaign's type recorded by the first call
naming it (campaigns.creator_wallet becomes nullable); writing functions
refuse REPEATABLE READ / SERIALIZABLE (PX025); the client-email lock is a row
lock (new table client_email_locks), no advisory lock; recalculate_levels is
the owner's; sizes checked before any work; level_for takes any whole number
(numeric); award_many(jsonb[]) for drivers sending arrays; a description on
every function.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0002_identity_isolation.sql")


def downgrade() -> None:
    _execute("0002_identity_isolation.downgrade.sql")
