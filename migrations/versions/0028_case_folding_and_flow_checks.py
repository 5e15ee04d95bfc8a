"""Case folding independent of the database's locale; the flows' checks a hostile test found missing.

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-27

Found by a hostile test (2026-11-27). Client emails were lower-cased, and campaign types, votes
and formula input names upper-cased, by the database's default collation: in a C-locale
database ÉLODIE@… and élodie@… were two clients, under ICU tr-TR ALICE@… became alıce@…, and
each was onboarded twice. pyxp.lower_cased (new) folds every database alike; the others fold
ASCII. A client registration on a campaign an approval named another creator for is refused
(PX022; raced, the approval paid one wallet and the registry named another); a registration by
the client's own onboarded wallet is PX021; an onboarding with nothing to grant writes nothing;
an INDIVIDUAL completion's outcome names its submission's MINT value (PX011); a free mission's
price 0 is no price; a batch event with an unknown field is PX017; PX004 shows a huge number
briefly.

Found by a second hostile test (the caller's transaction and session): no backslash escape in a
plain literal (standard_conforming_strings = off read '\\.' as '.'); READ UNCOMMITTED accepted;
pyxp.feed_wakeups = off for a transaction to be prepared; a transaction prepared in another
database no longer holds the feed back; the ledger's append-only triggers and the guard's event
triggers fire under session_replication_role = replica (ENABLE ALWAYS).

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0028_case_folding_and_flow_checks.sql")


def downgrade() -> None:
    _execute("0028_case_folding_and_flow_checks.downgrade.sql")
