"""What-if reads a generic award's params only; writes and reads during an archive.

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-27

Found by a hostile test (2026-11-27). The simulation evaluated a candidate's formula on a
generic award's whole metadata (its context with its params over it): a context note named
like an input failed every simulation with 22P02, or replaced the input. pyxp.row_formula_inputs
(new) keeps the keys its own rule's formula names. A candidate amount over 10^15 XP is PX004, as
the live award would be. The adjustments' keys carry a number per application (sequence
pyxp.retroactive_applications, new): two applications in one transaction shared them, and the
second wrote nothing. simulation_report's actions include the earlier adjustments, so that
they add up to its summary.

Found by a second hostile test: a flow deciding on rows an archive took after its snapshot
fails with 40001 (pyxp.recorded_request); an archive of empty partitions fails no read
(pyxp.ledger_unmoved); an archive is refused (PX030) while a transaction that may still chain
a row into an archived row's feed group runs; a wallet's last archived cursor in a group an
earlier archive cut is that group's last.

Executes its own frozen SQL files (a snapshot of sql/*.sql at this revision).
Never edit a revision after it has landed: write a new one.
"""

from pathlib import Path

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_HERE = Path(__file__).resolve().parent


def _execute(name: str) -> None:
    # Raw psycopg execute: the files hold many statements and % / : characters.
    op.get_bind().connection.driver_connection.execute((_HERE / name).read_text(encoding="utf-8"))


def upgrade() -> None:
    _execute("0027_what_if_inputs_and_writes_during_an_archive.sql")


def downgrade() -> None:
    _execute("0027_what_if_inputs_and_writes_during_an_archive.downgrade.sql")
