"""A hostile test of deployments where nobody is superuser: the partitions' guard runs no owner code.

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-27

The ledger partitions' guard, a superuser's event trigger function, read the archive's row in
pyxp.xp_ledger_archives as that superuser: a member of pyxp_owner who put a view there ran its own
code as the superuser. It now reads the catalogs and settings only; pyxp.archive_ledger_partitions
names its transaction in setting pyxp.archiving_xact. The guard is installed by this revision's
second file, which migrations/env.py runs again at the end of every migration run (a superuser's
pyxp db upgrade installs or replaces it, also when nothing is left to migrate).

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent
GUARD_FILE = "0030_deployments_without_a_superuser.guard.sql"


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0030_deployments_without_a_superuser.sql")
    _execute(GUARD_FILE)


def downgrade() -> None:
    _execute("0030_deployments_without_a_superuser.downgrade.sql")
