"""A logical replication subscriber skips the DELETE of its publisher's move of ledger rows.

pyxp.create_ledger_partitions moves a month's rows out of the default partition (nobody had created the
month's partition in time): it copies them into the new partition before attaching it, and deletes them
from the default partition, the only DELETE of ledger rows anywhere. With publish_via_partition_root the
DELETE is published and the copy is not: on a subscriber the append-only trigger refused it, the apply
retried it forever, and no later award reached the subscriber (a hostile test). The trigger now skips
a logical replication apply worker's DELETE, row by row: the subscriber keeps its rows where its own
partitions put them.

A subscriber that had no partition for a month (it never ran create_ledger_partitions) received that
month's rows in its default partition; an archive of that month on the publisher was skipped there
without a word, audit() reported opening_mismatch for good, and after a switchover the subscriber
archived again. Such an archive is now pending there (pyxp.archive_pending_here): following it refuses
(PX030, with where the rows are), and so does an archive. pyxp db upgrade follows each archive in turn
(follow_replicated_archives(up_to_archive), each in a savepoint): one that cannot be made no longer
undoes those before it. A month an archive took, empty, is not made again.

Also what stop 40 wrote after 0037 had landed (0037 is as it landed): simulation_report names the rules
its replay cannot count (not_simulated), and following an archive moves the rows its publisher wrote
after it, dated in its months, to the default partition.

Revision ID: 0038
Revises: 0037
Create Date: 2026-11-28

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0038_replicated_moves_of_ledger_rows.sql")


def downgrade() -> None:
    _execute("0038_replicated_moves_of_ledger_rows.downgrade.sql")
