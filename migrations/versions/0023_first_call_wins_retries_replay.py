"""A flow call made before replays whatever was recorded about its campaign or completion
since; a later call contradicting what an earlier one recorded is refused.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-27

pyxp.call_recorded (new) is asked before the flows compare a call with earlier ones, so an
approval, a completion's submission, outcome or vote, or a registration made before replays
(or returns its row) even if the registry or the completion's campaign changed since. A
completion's campaign is fixed by the first call naming it, votes included
(subject_locks.campaign_id, new). A creation by another wallet than an earlier approval
named, or than the agency whose client registration named the campaign, is refused (PX011).
PX001 and audit() name a refused character by its whole code point (pyxp.code_point, new).
Functions and one nullable column: nothing rewritten.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0023_first_call_wins_retries_replay.sql")


def downgrade() -> None:
    _execute("0023_first_call_wins_retries_replay.downgrade.sql")
