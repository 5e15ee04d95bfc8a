"""Reads that overlap an archive are refused for a retry; the change feed's floor lets a
consumer that read every archived row read on.

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-27

Found by a hostile test (2026-11-27). A read whose snapshot predates an archive's commit was
planned on the partitions left and saw no archive: pyxp.changes skipped the archived rows with
no PX029, audit() reported findings on a sound ledger, a past board came back empty. The
readers call pyxp.ledger_unmoved (new) after their reads: 40001, run it again. The feed's
floor is the cursor of the last row of the highest archived group (it was that group's cursor
+ 2^24 - 1: a consumer that had read every archived row was refused for good), and a consumer
of one wallet below it reads on when it missed none of the wallet's rows
(xp_wallet_openings.last_cursor, pyxp.wallet_feed_behind_archive, new). audit() compares a
checkpoint at an opening's position with the opening.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0026_reads_that_overlap_an_archive.sql")


def downgrade() -> None:
    _execute("0026_reads_that_overlap_an_archive.downgrade.sql")
