"""Owner operations that hold every award name who held the balances; one-row calls planned lean.

A ruleset's activation (pyxp rules install/apply), recalculate_levels, rebalance_rank_buckets,
apply_rules_retroactively and adopt_cluster take SHARE ROW EXCLUSIVE on pyxp.xp_balances and wait
at most their lock_timeout. Past it, PostgreSQL's bare "canceling statement due to lock timeout"
named nobody; an award left prepared (two-phase commit) by a coordinator held every such operation
and no session showed it (a hostile test). pyxp.hold_awards takes the lock for all five and, past
the timeout, raises the same 55P03 naming the holders: a prepared transaction by its gid, a session
by its pid.

The writer (pyxp.append_rows) plans a call of one row (a single award, a reversal, a flow call of
one rule) without the window, sorts and aggregates that order a call's rows: about 3 % of a single
award's instructions, capped or not.

Revision ID: 0036
Revises: 0035
Create Date: 2026-11-28

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0036_lock_holders_and_one_row_calls.sql")


def downgrade() -> None:
    _execute("0036_lock_holders_and_one_row_calls.downgrade.sql")
