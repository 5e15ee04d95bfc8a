"""A client email has one form: folded (lower-cased, final sigma as sigma) and NFKC-composed again.

Lower-casing a capital with a combining mark that has no precomposed capital (J̌, İ + a mark) left the
letter and its mark apart, where the same email typed in lower case is composed by NFKC: one client
became two, each onboarded (a hostile test). The forms stored before that read otherwise since are
recorded in xp_email_forms_before_0028, which the flows and the audit read.

Revision ID: 0045
Revises: 0044
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0045"
down_revision = "0044"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0045_one_form_per_client_email.sql")


def downgrade() -> None:
    _execute("0045_one_form_per_client_email.downgrade.sql")
