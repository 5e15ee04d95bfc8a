"""README.md's examples run, in README order, on the state its own steps leave, and show what comes back.

The examples are documentation first; this keeps them true. From "Install into a database"
on, every ```sql, ```python and ```sh block of the sections below runs on one fresh test
database (migrated, default ruleset active: what `pyxp db upgrade` leaves):

* SQL blocks statement by statement on one connection, as a service would;
* Python blocks statement by statement in one namespace, with PYXP_DATABASE_URL set;
* sh blocks command by command: each `pyxp ...` line through the installed console
  script in a subprocess, with PYXP_DATABASE_URL pointing at the test database.

Where an example shows its result, the result is compared with what came back:

* SQL: a trailing or following comment ``-- 2``, ``-- no rows``, ``-- 6 | 2000 | 4000 | 1500``
  (one line per row), or an untagged block right after the SQL block (psql's output of its
  last statement);
* Python: a comment after an expression, ``# 2500`` (an int: an ``Award``'s ``xp``),
  ``# True``, ``# (600, 600, 1, 4, True, False)``, ``# []``, ``# Balance(total_xp=600, ...)``;
* sh: ``# → text`` (the output holds the text; ``...`` skips), ``# {"key": value, ...}``
  (the JSON output holds those keys; an ``{"error": ...}`` means exit code 2), or
  ``# error: ...`` (exit code 2 and that line on stderr).

Other comments are prose. "From other languages" is run by tests/test_other_languages.py
(each example on a database of its own).
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pyxp.database import DATABASE_URL_VARIABLE
from pyxp.ruleset_config import load_ruleset

README = Path(__file__).resolve().parents[1] / "README.md"
PYXP_SCRIPT = str(Path(sys.executable).with_name("pyxp"))

# The sections whose examples run, in README order (others: the commands of the first lines,
# "From other languages" with its own test, and sections without runnable examples).
RUN_SECTIONS = ("Install into a database", "For application developers",
                "The Winstory flows: worked examples", "Rules and levels", "For DBAs and auditors", "CLI")


@dataclass
class Block:
    section: str
    language: str
    code: str
    line: int  # of the opening fence, for messages
    output: str | None = None  # an untagged block right after a SQL block


def readme_blocks(sections: tuple[str, ...] = RUN_SECTIONS) -> list[Block]:
    """The fenced blocks of the given top-level sections, in README order."""
    text = README.read_text()
    blocks: list[Block] = []
    section = ""
    fence = re.compile(r"^```(\w*)\n(.*?)^```\n?", re.DOTALL | re.MULTILINE)
    position = 0
    while (match := fence.search(text, position)) is not None:
        right_after = not text[position:match.start()].strip()  # nothing between it and the previous block
        for heading in re.findall(r"^## (.+)$", text[position:match.start()], re.MULTILINE):
            section = heading.strip()
        position = match.end()
        if section not in sections:
            continue
        language, code = match.group(1), match.group(2)
        if (language == "" and right_after and blocks and blocks[-1].language == "sql"
                and blocks[-1].output is None):
            blocks[-1].output = code  # psql's output of the SQL block above
            continue
        blocks.append(Block(section, language, code, text.count("\n", 0, match.start()) + 1))
    return blocks


# --------------------------------------------------------------------------- SQL


@dataclass
class Statement:
    sql: str
    comments: list[str] = field(default_factory=list)  # on its lines, then on the comment lines after it


def sql_statements(block: str) -> list[Statement]:
    statements: list[Statement] = []
    current: list[str] = []
    comments: list[str] = []
    for line in block.splitlines():
        match = re.search(r"(^|\s)--(.*)$", line)
        code = line[:match.start()] if match else line
        comment = match.group(2).strip() if match else None
        if code.strip():
            current.append(code)
            if comment is not None:
                comments.append(comment)
        elif comment is not None and statements and not current:
            statements[-1].comments.append(comment)
        if current and code.rstrip().endswith(";"):
            statements.append(Statement("\n".join(current).rstrip().rstrip(";"), comments))
            current, comments = [], []
    assert not current, f"unterminated statement: {current}"
    return statements


def psql_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def check_sql_result(statement: Statement, rows: list[tuple[Any, ...]]) -> None:
    shown_rows: list[list[str]] = []
    for comment in statement.comments:
        text = re.sub(r"\s+\(.*\)$", "", comment).strip()
        if text == "no rows":
            assert rows == [], statement.sql
        elif text == "three equal numbers":
            assert len(rows) == 1 and len(set(rows[0])) == 1 and len(rows[0]) == 3, (statement.sql, rows)
        elif "|" in text:
            shown_rows.append([cell.strip() for cell in text.split("|")])
        elif re.fullmatch(r"[+-]?\d+", text):
            assert rows and rows[0][0] == int(text), (statement.sql, rows)
    for index, shown in enumerate(shown_rows):
        assert index < len(rows), (statement.sql, rows)
        assert [psql_text(v) for v in rows[index][:len(shown)]] == shown, (statement.sql, rows[index])
    if shown_rows:
        assert len(rows) == len(shown_rows), (statement.sql, rows)


def check_psql_output(output: str, statement: Statement, names: list[str],
                      rows: list[tuple[Any, ...]]) -> None:
    """psql's aligned output shown after a SQL block: same columns, same rows."""
    lines = [line for line in output.splitlines() if line.strip()]
    header, separator, shown = lines[0], lines[1], lines[2:]
    assert set(separator) <= {"-", "+"}, separator
    assert [name.strip() for name in header.split("|")] == names, statement.sql
    assert [[cell.strip() for cell in line.split("|")] for line in shown] == \
        [[psql_text(v) for v in row] for row in rows], statement.sql


def run_sql(block: Block, db: psycopg.Connection[Any]) -> None:
    statements = sql_statements(block.code)
    for statement in statements:
        if statement.sql.upper().startswith("GRANT "):
            continue  # grants to the reader's own login roles (my_app, my_auditor): tests/test_security.py
        cursor = db.execute(statement.sql)
        rows = cursor.fetchall() if cursor.description else []
        check_sql_result(statement, rows)
        if block.output is not None and statement is statements[-1]:
            assert cursor.description is not None
            check_psql_output(block.output, statement, [c.name for c in cursor.description], rows)


# --------------------------------------------------------------------------- Python


def python_result(comment: str) -> tuple[str, Any] | None:
    """What a comment after an expression shows: (kind, expected), or None for prose."""
    text = comment.strip()
    if match := re.match(r"[+-]?\d+\b", text):
        return "int", int(match.group())
    if match := re.match(r"(True|False|None)\b", text):
        return "literal", ast.literal_eval(match.group())
    if text.startswith("[]"):
        return "literal", []
    if text.startswith("(") and text.endswith(")"):
        try:
            return "literal", ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
    if match := re.fullmatch(r"([A-Z]\w*)\((.*)\)", text):
        fields = {}
        for part in match.group(2).split(", "):
            if part.strip() == "...":
                continue
            name, value = part.split("=", 1)
            fields[name.strip()] = ast.literal_eval(value)
        return "object", (match.group(1), fields)
    return None


def check_python_result(source: str, value: Any, shown: tuple[str, Any]) -> None:
    kind, expected = shown
    if kind == "int":
        actual = value if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else value.xp
        assert actual == expected, source
    elif kind == "literal":
        assert value == expected, (source, value)
    else:
        name, fields = expected
        assert type(value).__name__ == name, (source, value)
        for key, wanted in fields.items():
            assert getattr(value, key) == wanted, (source, key, value)


def run_python(block: Block, namespace: dict[str, Any]) -> None:
    tree = ast.parse(block.code)
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(block.code).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string[1:].strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER):
            code_lines.add(token.start[0])
    filename = f"{README}:{block.line}"
    for statement in tree.body:
        source = ast.get_source_segment(block.code, statement) or ""
        if not isinstance(statement, ast.Expr):
            exec(compile(ast.Module([statement], []), filename, "exec"), namespace)  # noqa: S102
            continue
        value = eval(compile(ast.Expression(statement.value), filename, "eval"), namespace)
        last = statement.end_lineno or statement.lineno
        comment = comments.get(last)
        if comment is None and last + 1 in comments and last + 1 not in code_lines:
            comment = comments[last + 1]
        shown = python_result(comment) if comment else None
        if shown is not None:
            check_python_result(source, value, shown)


# --------------------------------------------------------------------------- sh


@dataclass
class Command:
    text: str
    shown: str | None = None


def sh_commands(block: str) -> list[Command]:
    commands: list[Command] = []
    pending = ""
    for raw in block.splitlines():
        line = pending + raw.strip() if pending else raw.rstrip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            comment = line.lstrip()[1:].strip()
            if commands and commands[-1].shown is None and re.match(r"(→|error:|\{|\[)", comment):
                commands[-1].shown = comment
            continue
        match = re.search(r"\s#\s?(.*)$", line)
        command = line[:match.start()].strip() if match else line.strip()
        comment = match.group(1).strip() if match else None
        shown = comment if comment and re.match(r"(→|error:|\{|\[)", comment) else None
        commands.append(Command(command, shown))
    return commands


def squeeze(text: str) -> str:
    return " ".join(text.split())


def contains_in_order(text: str, shown: str) -> bool:
    """The parts of ``shown`` between ``...`` appear in ``text`` in that order (whitespace squeezed)."""
    text, position = squeeze(text), 0
    for part in (squeeze(p) for p in re.split(r"\.\.\.|…", shown)):
        found = text.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


def json_subset(actual: Any, shown: Any) -> bool:
    if isinstance(shown, dict):
        return isinstance(actual, dict) and all(k in actual and json_subset(actual[k], v)
                                                for k, v in shown.items())
    if isinstance(shown, list):
        return isinstance(actual, list) and len(actual) >= len(shown) and \
            all(json_subset(a, s) for a, s in zip(actual, shown))
    return bool(actual == shown)


def run_sh(block: Block, conninfo: str) -> None:
    for command in sh_commands(block.code):
        words = shlex.split(command.text)
        if words[0] == "export":
            continue  # the test database stands for the reader's server
        if words[0] == "eval" or words[0].startswith("_PYXP_COMPLETE="):
            continue  # shell completion: tests/test_cli.py runs it
        assert words[0] == "pyxp", f"README line {block.line}: what is {command.text!r}?"
        result = subprocess.run([PYXP_SCRIPT, *words[1:]], check=False, capture_output=True, text=True,
                                timeout=300, env={**os.environ, DATABASE_URL_VARIABLE: conninfo})
        where = f"README line {block.line}: {command.text}"
        shown = command.shown
        if shown is None:
            assert result.returncode == 0, (where, result.stderr)
        elif shown.startswith("→"):
            assert result.returncode == 0, (where, result.stderr)
            assert contains_in_order(result.stdout, shown[1:]), (where, result.stdout)
        elif shown.startswith("error:"):
            assert result.returncode == 2, (where, result.stdout, result.stderr)
            assert contains_in_order(result.stderr, shown), (where, result.stderr)
            assert squeeze(result.stderr).startswith(squeeze(re.split(r"\.\.\.|…", shown)[0])), where
        else:
            expected = json.loads(re.sub(r",\s*\.\.\.|\.\.\.", "", shown))
            failed = isinstance(expected, dict) and "error" in expected
            assert result.returncode == (2 if failed else 0), (where, result.stderr)
            assert json_subset(json.loads(result.stdout), expected), (where, result.stdout)


# --------------------------------------------------------------------------- the tests


def test_readme_has_examples_of_every_kind() -> None:
    languages = [block.language for block in readme_blocks()]
    assert languages.count("sql") >= 8 and languages.count("python") >= 4 and languages.count("sh") >= 2
    assert sum(block.output is not None for block in readme_blocks()) >= 1


def test_install_section_leaves_the_default_ruleset_the_examples_use() -> None:
    """`winstory-flows` is an alternative, not an install step: the examples' figures are winstory's."""
    install = [b for b in readme_blocks(("Install into a database",)) if b.language == "sh"]
    commands = [c.text for block in install for c in sh_commands(block.code)]
    assert "pyxp db upgrade" in commands
    assert not any("rules apply" in command for command in commands), commands


def test_readme_examples_run_in_order_and_show_what_comes_back(db: psycopg.Connection[Any], conninfo: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_VARIABLE, conninfo)
    namespace: dict[str, Any] = {}
    ran: list[str] = []
    try:
        for block in readme_blocks():
            if block.language == "sql":
                run_sql(block, db)
            elif block.language == "python":
                run_python(block, namespace)
            elif block.language == "sh":
                run_sh(block, conninfo)
            else:
                continue
            ran.append(f"{block.language}@{block.line}")
    finally:
        client = namespace.get("xp")
        if client is not None and hasattr(client, "close"):
            client.close()
    assert ran, "no example ran"
    assert db.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)
    # The figures the examples state, once all of them ran.
    balances = {wallet: (total, level) for wallet, total, level in
                db.execute("SELECT user_wallet, total_xp, current_level FROM pyxp.xp_balances").fetchall()}
    assert balances["0x_creator"] == (2600, 6)
    assert balances["0xdef"] == (2500, 6)
    assert balances["0x_client"] == (1000, 5)
    assert balances["0xabc"] == (900, 4)  # 600 reversed, +400 +100 (Python), +400 (CLI)
    assert balances["0x_moderator_2"] == (-1, 1)


# --------------------------------------------------------------------------- "why each row"


def why_each_row_query() -> str:
    """README "For DBAs and auditors": the "why each row" query, for the wallet ``%(wallet)s``."""
    found = [s.sql for block in readme_blocks(("For DBAs and auditors",)) if block.language == "sql"
             for s in sql_statements(block.code) if "pyxp.rules r" in s.sql and "t.wallet_seq" in s.sql]
    assert len(found) == 1, found
    assert found[0].count("'0x_creator'") == 1, found[0]
    return found[0].replace("'0x_creator'", "%(wallet)s")


def test_why_each_row_names_the_ruleset_of_reversals_and_adjustments(db: psycopg.Connection[Any]) -> None:
    """A reversal shows the rule and ruleset of the row it reverses; a retroactive adjustment (no
    rule) the version applied (its metadata's ruleset_id): no row is left without a ruleset."""
    award = "SELECT transaction_id FROM pyxp.award('0xwhy', 'CAMPAIGN_APPROVED', %s)"
    first = db.execute(award, ("why-1",)).fetchone()
    assert first is not None
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (first[0],))
    db.execute(award, ("why-2",))
    candidate = load_ruleset("winstory").definition()
    candidate["name"] = "winstory-why"
    next(r for r in candidate["rules"] if r["action"] == "CAMPAIGN_APPROVED")["constant"] = "150"
    installed = db.execute("SELECT ruleset_id FROM pyxp.install_ruleset(%s, '# test', false)",
                           (Jsonb(candidate),)).fetchone()
    assert installed is not None
    db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (installed[0],))
    rows = db.execute(why_each_row_query(), {"wallet": "0xwhy"}).fetchall()
    approved = db.execute("SELECT formula FROM pyxp.rules JOIN pyxp.rulesets USING (ruleset_id) "
                          "WHERE name = 'winstory' AND action = 'CAMPAIGN_APPROVED'").fetchone()
    assert approved is not None
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("CAMPAIGN_APPROVED", 100, approved[0], "winstory", 1),
        ("REVERSAL", -100, approved[0], "winstory", 1),
        ("CAMPAIGN_APPROVED", 100, approved[0], "winstory", 1),
        ("RULES_ADJUSTMENT", 50, None, "winstory-why", 1),
    ]
