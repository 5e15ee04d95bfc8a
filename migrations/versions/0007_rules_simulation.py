"""What-if and retroactive rule changes (SPEC 13).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

pyxp.simulate_rules and pyxp.simulation_report replay the ledger under an
installed ruleset version, writing nothing; pyxp.apply_rules_retroactively
activates it and appends one RULES_ADJUSTMENT row per wallet whose total it
changes. install_ruleset installs without activating on request. Caps are
applied inside the writer's main statements (pyxp.capped_rows is gone). The
downgrade leaves the adjustment rows in the ledger (append-only).

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0007_rules_simulation.sql")


def downgrade() -> None:
    _execute("0007_rules_simulation.downgrade.sql")
