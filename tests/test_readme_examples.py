"""Every SQL and Python example of README.md's developer sections runs, in order, on a fresh database.

The examples are documentation first; this keeps them true. SQL blocks run as a
service would (psql-style statements on one connection); Python blocks run in one
namespace with PYXP_DATABASE_URL pointing at the test database.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FIRST_SECTION = "## For application developers"
END_SECTION = "## Rules and levels"


def _blocks(language: str) -> list[str]:
    text = README.read_text()
    section = text[text.index(FIRST_SECTION):text.index(END_SECTION)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _statements(block: str) -> list[str]:
    code = "\n".join(re.sub(r"(^|\s)--.*$", "", line) for line in block.splitlines())  # drop "-- result" notes
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def test_readme_has_sql_and_python_examples() -> None:
    assert len(_blocks("sql")) >= 6 and len(_blocks("python")) >= 4


def test_readme_examples_run_in_order(db: psycopg.Connection[Any], conninfo: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for block in _blocks("sql"):
        for statement in _statements(block):
            db.execute(statement).fetchall()
    monkeypatch.setenv("PYXP_DATABASE_URL", conninfo)
    namespace: dict[str, Any] = {}
    for block in _blocks("python"):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    audit = db.execute("SELECT count(*) FROM pyxp.audit()").fetchone()
    assert audit == (0,)
    # The figures the examples state.
    assert db.execute("SELECT total_xp, current_level FROM pyxp.xp_balances WHERE user_wallet = '0x_creator'"
                      ).fetchone() == (2600, 6)
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = '0xdef'").fetchone() == (2500,)
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = '0x_client'").fetchone() == (1000,)
