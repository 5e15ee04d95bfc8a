"""A capped single award locks its wallet in the statement that reads it; the writer's
hot statements name no ledger partition (issues 13 and 11).

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-27

pyxp.append_rows: a single call under a ruleset with caps takes its wallet's balance
lock in step 2's read (FOR UPDATE), as one without caps has since 0020; when the
version it locked is not its snapshot's (it waited for a writer of the wallet), step 2
runs again so that the allowances' usage includes that writer's commit. The claim
probe and the replayed rows read the ledger through pyxp.claimed_row (new, STRICT: not
called for a new key): a generic plan naming the partitioned ledger locks and
initialises every partition's scans at each execution. The caps' usage of new gains
is written by step 4's statement. Functions only: no table changes, nothing rewritten.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0021_lock_in_the_read_claims_apart.sql")


def downgrade() -> None:
    _execute("0021_lock_in_the_read_claims_apart.downgrade.sql")
