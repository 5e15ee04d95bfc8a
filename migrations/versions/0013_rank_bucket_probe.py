"""The rank buckets' probe reads xp_rank_counts' primary key (issue 11).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26

pyxp.rank_bucket_of gains a plain bound on neg_xp that repeats its row
comparison, and pyxp.rebalance_rank_buckets ends with ANALYZE of
xp_rank_counts: planned on statistics that saw a small table, each probe
read and sorted the whole table (58 us against 2.6 us a probe at a few
thousand count rows; the writer probes twice per moved balance). Functions
only; the downgrade restores 0010's bodies.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0013_rank_bucket_probe.sql")


def downgrade() -> None:
    _execute("0013_rank_bucket_probe.downgrade.sql")
