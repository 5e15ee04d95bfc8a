"""The history of ruleset activations: which ruleset was in force at any instant (pyxp.ruleset_activations).

rulesets.activated_at keeps a ruleset's latest activation only: a ruleset activated again overwrote it, and a DBA
could not tell which ruleset, and so which zone and caps, was in force before (a DBA's review). Every activation is
now a row of an append-only table (PX013 on UPDATE, DELETE, TRUNCATE), written by pyxp.activate_ruleset; the
activations before this revision are rebuilt from rulesets.activated_at (reconstructed: one per ruleset). audit()
checks the history against the rulesets (activation_history). pyxp_reader and pyxp_writer may execute pyxp.key_hash.

Revision ID: 0040
Revises: 0039
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0040"
down_revision = "0039"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0040_ruleset_activation_history.sql")


def downgrade() -> None:
    _execute("0040_ruleset_activation_history.downgrade.sql")
