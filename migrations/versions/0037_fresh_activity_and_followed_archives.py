"""The feed's horizon reads pg_stat_activity afresh; a logical subscriber makes its publisher's archives.

pyxp.schema_revision() says the revision of the functions (a logical replication copies
pyxp.alembic_version, not them: a subscriber said 0036 with 0035's functions); pyxp db current and
pyxp db upgrade compare the two. The writer (pyxp.append_rows) frees a reversed capped gain's allowance
before the balance update, whose triggers may award (an award there was cut to 0); its mark of a nested
write is the writing transaction's id, not a text any session may set; PX019's hint states the bound.
(These were written into 0036 after it had landed at dbfdb09; they are this revision's.)

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
runs it at its end (and warns when it cannot); rows written after the archive, dated in its months, go to
the default partition as on the publisher. archive_ledger_partitions refuses while such an archive
is not made here: a switched-over subscriber archived the same months again.

simulate_rules refuses an unknown ruleset on a ledger with no balance too (PX027; it answered "no
wallets"), and simulation_report names the rules its replay of the ledger's rows cannot count
(not_simulated: a rule added on calls that wrote no row of its action, a rule whose event, campaign
types or condition changed); hold_awards names another role's session by its pid alone.

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
