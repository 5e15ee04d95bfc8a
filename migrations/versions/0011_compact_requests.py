"""A compact idempotency store (issue 15, item 4).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26

A flow's or reversal's request keeps its key's hash and its inputs' digest
(about 100 bytes) instead of the key text and a jsonb copy of its inputs:
its ledger rows hold the key and rebuild the inputs. Requests whose rows do
not rebuild them keep them. The downgrade rebuilds every request's key and
inputs from its rows.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0011_compact_requests.sql")


def downgrade() -> None:
    _execute("0011_compact_requests.downgrade.sql")
