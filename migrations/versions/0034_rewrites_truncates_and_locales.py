"""Three hostile tests (table maintenance under load, clients cut short, locales and encodings).

Revision ID: 0034
Revises: 0033
Create Date: 2026-11-28

pg_repack of a ledger partition under load made the change feed skip committed rows for good and
audits report false findings: a read that waited for a rewrite's lock read the rows it wrote again
with an older snapshot (pyxp.ledger_unmoved now refuses it, 40001). Every table of pyxp refuses
TRUNCATE (PX013): of the claims, the requests or the campaigns it let keys be paid again, or an
approval pay another wallet, silently. pyxp.changes names its columns (a column an application added
to the ledger failed every read of the feed). In a Turkish database one client's onboarding XP went
to another person: the emails' pre-0028 reading is kept only for registrations made before this
revision (pyxp.emails_lowered_until). Batches lock wallets in code-point order; a ruleset's
timezone may not be localtime or Factory; the simulation report breaks ties by code point.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0034_rewrites_truncates_and_locales.sql")


def downgrade() -> None:
    _execute("0034_rewrites_truncates_and_locales.downgrade.sql")
