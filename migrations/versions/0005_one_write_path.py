"""One write path and lean idempotency records (issue: the write path at the hardware's limit).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Every ledger row is now written by pyxp.append_rows (single awards, flows,
batches, reversals). A generic award's claim is its own ledger row
(xp_transactions.request_digest under the unique index xp_transactions_claim)
instead of an xp_requests row; the foreign keys from xp_transactions to rules
and xp_requests, and the index on idempotency_key, are replaced by audit()
checks and a partial index. Existing generic awards' requests are carried
into the new form (their first row gets the digest of their stored inputs);
the downgrade rebuilds them from the rows and refuses if any would differ.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0005_one_write_path.sql")


def downgrade() -> None:
    _execute("0005_one_write_path.downgrade.sql")
