"""README "From other languages": its node-postgres and asyncpg examples run and print what it shows.

Each example is extracted from README.md (the ```js block, the ```python block) and run
as a program of its own against a fresh test database, with PYXP_DATABASE_URL set to
that database's URL; its output must be the ```text block shown after it ("prints:").

Node.js: `pg` is installed from the npm registry once per test session into a temporary
folder. Without node or npm the Node tests are skipped, except under CI (env CI set),
where that is a failure. asyncpg is part of the `test` extra.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from pyxp.database import DATABASE_URL_VARIABLE
from pyxp.errors import IdempotencyConflict, XPError, error_from_database, error_from_sqlstate

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From other languages"


def section_text() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def example(language: str) -> tuple[str, str]:
    """(code, shown output) of the section's only ```language block and the ```text block after it."""
    found = re.findall(rf"^```{language}\n(.*?)^```\n+prints:\n+```text\n(.*?)^```", section_text(),
                       re.DOTALL | re.MULTILINE)
    assert len(found) == 1, f"one ```{language} block followed by its printed output"
    return found[0]


def database_url(conninfo: str) -> str:
    """A postgresql:// URL for drivers that take no key=value conninfo (node-postgres, asyncpg)."""
    params = conninfo_to_dict(conninfo)
    user = quote(str(params.get("user") or ""), safe="")
    password = f":{quote(str(params['password']), safe='')}" if params.get("password") else ""
    dbname = quote(str(params["dbname"]), safe="")
    host, port = str(params.get("host") or "localhost"), str(params.get("port") or "5432")
    if host.startswith("/"):  # a socket directory
        return f"postgresql://{user}{password}@/{dbname}?host={quote(host, safe='/')}&port={port}"
    return f"postgresql://{user}{password}@{host}:{port}/{dbname}"


def printed_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


# --------------------------------------------------------------------------- Node.js (node-postgres)


def run_node(project: Path, name: str, code: str, conninfo: str) -> subprocess.CompletedProcess[str]:
    script = project / name
    script.write_text(code)
    return subprocess.run(["node", str(script)], check=False, capture_output=True, text=True, timeout=120,
                          cwd=project, env={**os.environ, DATABASE_URL_VARIABLE: database_url(conninfo)})


def test_readme_has_a_node_and_an_asyncpg_example() -> None:
    js, _ = example("js")
    python, _ = example("python")
    assert 'require("pg")' in js and "$1::jsonb[]" in js and "err.code" in js and "err.hint" in js
    assert "import asyncpg" in python and "error_from_sqlstate" in python and "exc.sqlstate" in python


def test_node_postgres_example_prints_what_the_readme_shows(node_project: Path, conninfo: str) -> None:
    code, shown = example("js")
    result = run_node(node_project, "readme_example.js", code, conninfo)
    assert result.returncode == 0, result.stderr
    assert printed_lines(result.stdout) == printed_lines(shown)


def test_node_postgres_js_array_needs_jsonb_array_cast(node_project: Path, conninfo: str) -> None:
    """What the README says about node-postgres arrays: $1::jsonb[] works, $1::jsonb is 22P02."""
    code = """
const { Client } = require("pg");
(async () => {
  const client = new Client({ connectionString: process.env.PYXP_DATABASE_URL });
  await client.connect();
  const events = [{ wallet: "0xjs", action: "CAMPAIGN_APPROVED", idempotency_key: "js-1" }];
  const out = {};
  try {
    await client.query("SELECT * FROM pyxp.award_many(events => $1::jsonb)", [events]);
    out.jsonb = "ok";
  } catch (err) { out.jsonb = err.code; }
  const rows = await client.query("SELECT xp_amount FROM pyxp.award_many(events => $1::jsonb[])", [events]);
  out.jsonb_array = rows.rows.map((r) => r.xp_amount);
  try { await client.query("SELECT * FROM pyxp.award(wallet => $1::text, action => $2::text, "
                           + "idempotency_key => $3::text)", ["", "CAMPAIGN_APPROVED", "js-2"]); }
  catch (err) { out.refusal = { code: err.code, hint: err.hint }; }
  console.log(JSON.stringify(out));
  await client.end();
})().catch((err) => { console.error(err); process.exit(1); });
"""
    result = run_node(node_project, "arrays.js", code, conninfo)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["jsonb"] == "22P02"
    assert out["jsonb_array"] == ["100"]  # int8 arrives as a string
    assert out["refusal"]["code"] == "PX001" and out["refusal"]["hint"]


# --------------------------------------------------------------------------- Python (asyncpg)


def test_asyncpg_example_prints_what_the_readme_shows(conninfo: str) -> None:
    pytest.importorskip("asyncpg")
    code, shown = example("python")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120, env={**os.environ, DATABASE_URL_VARIABLE: database_url(conninfo)})
    assert result.returncode == 0, result.stderr
    assert printed_lines(result.stdout) == printed_lines(shown)


def test_asyncpg_errors_map_to_pyxp_classes(conninfo: str) -> None:
    """asyncpg's UnknownPostgresError carries the PX code; both helpers give the pyxp class."""
    asyncpg = pytest.importorskip("asyncpg")

    async def refused() -> Any:
        conn = await asyncpg.connect(database_url(conninfo))
        try:
            call = ("SELECT * FROM pyxp.award(wallet => $1::text, action => $2::text, "
                    "idempotency_key => $3::text, params => $4::jsonb)")
            action = "Completion_Submit_B2C_Paid"
            await conn.fetch(call, "0xa", action, "k", json.dumps({"PRICE_COMPLETION": 1}))
            with pytest.raises(asyncpg.PostgresError) as caught:
                await conn.fetch(call, "0xa", action, "k", json.dumps({"PRICE_COMPLETION": 2}))
            assert await conn.fetchval("SELECT 1") == 1  # the connection is still usable
            return caught.value
        finally:
            await conn.close()

    exc = asyncio.run(refused())
    assert type(exc).__name__ == "UnknownPostgresError" and exc.sqlstate == "PX010"
    for error in (error_from_sqlstate(exc.sqlstate, exc.message, exc.hint, exc.detail),
                  error_from_database(exc)):
        assert isinstance(error, IdempotencyConflict) and isinstance(error, XPError)
        assert (error.code, error.message, error.hint, error.detail) == \
            ("PX010", exc.message, exc.hint, exc.detail)
        assert error.detail and "first call:" in error.detail
