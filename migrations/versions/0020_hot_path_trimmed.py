"""The write path's hot statements trimmed (issue 11).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27

pyxp.append_rows: a single call under a ruleset without caps locks its wallet's
balance in the statement that reads it and the claims (FOR UPDATE), one statement
less per award; a batch locks its wallets without writing a new version of their
rows (ON CONFLICT DO UPDATE ... WHERE false). pyxp.writing_ruleset and
pyxp.checked_params skip a query each on the common path; the comments of
pyxp.chain_problems and pyxp.unsliced_problems (0019) name every check they run.
Functions and comments only: no table changes, nothing rewritten.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0020_hot_path_trimmed.sql")


def downgrade() -> None:
    _execute("0020_hot_path_trimmed.downgrade.sql")
