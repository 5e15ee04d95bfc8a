"""The rank buckets as they shipped after review (issue 11, item 3).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26

0009 landed first with writers counting in slot pg_backend_pid() % 8 of a
bucket, and its file was later edited in place. This revision carries both
forms to the reviewed one (a slot per backend, the unranked index,
pyxp.board_rank, the folding rebalance) and is a no-op on a database that
ran the edited file. The downgrade folds the slots and restores the first
form.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0010_rank_slots_per_backend.sql")


def downgrade() -> None:
    _execute("0010_rank_slots_per_backend.downgrade.sql")
