"""The feed's horizon reads pg_stat_activity afresh; a logical subscriber makes its publisher's archives.

PostgreSQL keeps one copy of pg_stat_activity for a transaction's duration. pyxp.oldest_running_here,
which tells the transactions of other databases from this one's for the change feed's horizon, read
that copy: a reader inside a transaction took a backend another database started after its first read
for one of its own, and its pages were held back until its transaction ended (a pid reused by a
backend of this database could have let a page pass). It now reads the view afresh
(pg_stat_clear_snapshot), as pyxp.hold_awards does for the holders it names. A cursor another
session's newer snapshot handed out was refused with PX023 ("ahead of the feed") in an older
REPEATABLE READ or SERIALIZABLE snapshot; its group's transaction has ended (pyxp.transaction_ended):
the page is empty there, and the next transaction reads on.

An archive on a logical replication publisher reaches a subscriber as rows (the archive, the
openings, the archived usage) while its partitions stay in the subscriber's ledger (DDL is not
replicated): the subscriber's audit() reported opening_mismatch for every archived wallet, and after
the switchover its own archive took the same months again (23505). pyxp.follow_replicated_archives()
moves those partitions to pyxp_archive there, their rows checked against the archive; pyxp db upgrade
runs it at its end.

Revision ID: 0037
Revises: 0036
Create Date: 2026-11-28

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0037_fresh_activity_and_followed_archives.sql")


def downgrade() -> None:
    _execute("0037_fresh_activity_and_followed_archives.downgrade.sql")
