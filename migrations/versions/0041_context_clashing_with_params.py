"""A generic award whose context holds one of its params with another value is refused (PX017).

The row's metadata is the context with the params, the params' keys over the context's: the context's value was
lost, silently (a DBA's review). pyxp.planned_awards, which plans single awards and batches, now refuses it for a
key not claimed yet (a call accepted before replays), naming the key and both values; the same value in both is
accepted. Params' names and the context's keys are read alike, by one function (pyxp.param_name).

Revision ID: 0041
Revises: 0040
Create Date: 2026-11-29

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0041"
down_revision = "0040"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0041_context_clashing_with_params.sql")


def downgrade() -> None:
    _execute("0041_context_clashing_with_params.downgrade.sql")
