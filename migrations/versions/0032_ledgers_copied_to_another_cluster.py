"""A hostile test of ledgers copied to another cluster: the ledger knows its cluster, and adopts a new one.

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-27

The change feed's groups, the audit checkpoints' xmins and the archives' floors are transaction ids of
the cluster that wrote them; a logical copy carries them to a cluster whose ids run elsewhere (and
logical replication does not carry sequences). The ledger now names its cluster (pyxp.ledger_cluster)
and the offset it adds to its ids (pyxp.xid_offset); on another cluster the writer, the feed, the
checkpoints and the archive refuse (PX032) until pyxp.adopt_cluster() makes it this one's, which this
revision runs at its end and migrations/env.py at the end of every run.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0032_ledgers_copied_to_another_cluster.sql")


def downgrade() -> None:
    _execute("0032_ledgers_copied_to_another_cluster.downgrade.sql")
