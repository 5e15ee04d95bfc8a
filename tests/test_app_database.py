"""pyxp beside an application that has its own alembic history (SPEC §9).

pyxp keeps its migration history in ``pyxp.alembic_version``, never in
``public``: the application's ``public.alembic_version`` is neither read nor
written, whichever of the two migrates first. An install from before that
change (pyxp's row in ``public.alembic_version``) is moved on upgrade, and only
pyxp's row.

The application here is a real alembic project (written to a temporary
directory): two revisions ``app_rev_1`` (a table) and ``app_rev_2`` (a column).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pyxp import schema
from pyxp.database import DATABASE_URL_VARIABLE

APP_ENV = '''
import psycopg
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

conninfo = context.config.attributes["conninfo"]
engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)  # public.alembic_version
    with context.begin_transaction():
        context.run_migrations()
'''

APP_REVISION = '''
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.execute({up!r})


def downgrade():
    op.execute({down_sql!r})
'''


@pytest.fixture
def app(tmp_path: Path) -> Callable[[str], Config]:
    """``app(conninfo)``: the alembic Config of an application project with revisions app_rev_1, app_rev_2."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(APP_ENV, encoding="utf-8")
    (tmp_path / "script.py.mako").write_text("", encoding="utf-8")
    revisions = [
        ("app_rev_1", None, "CREATE TABLE public.app_things (id serial PRIMARY KEY)",
         "DROP TABLE public.app_things"),
        ("app_rev_2", "app_rev_1", "ALTER TABLE public.app_things ADD COLUMN note text",
         "ALTER TABLE public.app_things DROP COLUMN note"),
    ]
    for revision, down, up, down_sql in revisions:
        (tmp_path / "versions" / f"{revision}.py").write_text(
            APP_REVISION.format(revision=revision, down=down, up=up, down_sql=down_sql), encoding="utf-8")

    def config(conninfo: str) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(tmp_path))
        cfg.attributes["conninfo"] = conninfo
        return cfg

    return config


def cli(conninfo: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, DATABASE_URL_VARIABLE: conninfo, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "pyxp.cli", *args], capture_output=True, text=True,
                            env=environment, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result


def current_json(conninfo: str) -> Any:
    return json.loads(cli(conninfo, "db", "current", "--json").stdout)


def rows(conninfo: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [tuple(row) for row in conn.execute(query)]


def table_exists(conninfo: str, name: str) -> bool:
    return rows(conninfo, f"SELECT to_regclass('{name}') IS NOT NULL") == [(True,)]


def app_versions(conninfo: str) -> list[str]:
    if not table_exists(conninfo, "public.alembic_version"):
        return []
    return sorted(row[0] for row in rows(conninfo, "SELECT version_num FROM public.alembic_version"))


def pyxp_versions(conninfo: str) -> list[str]:
    if not table_exists(conninfo, "pyxp.alembic_version"):
        return []
    return [row[0] for row in rows(conninfo, "SELECT version_num FROM pyxp.alembic_version")]


def stamp_by_hand(conninfo: str, *versions: str) -> None:
    """``public.alembic_version`` with these rows, as an application (or pyxp before 0.x) left it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.alembic_version "
                     "(version_num varchar(32) NOT NULL PRIMARY KEY)")
        for version in versions:
            conn.execute("INSERT INTO public.alembic_version VALUES (%s)", (version,))


def make_legacy(conninfo: str, *app_rows: str) -> None:
    """A pyxp install from before pyxp.alembic_version: migrated to 0001, its row in public."""
    schema.upgrade(conninfo, "0001")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE pyxp.alembic_version")
    stamp_by_hand(conninfo, "0001", *app_rows)


HEAD = schema.head_revision()


# --------------------------------------------------------------------------- side by side


def test_a_fresh_install_keeps_its_history_in_the_pyxp_schema(fresh_database: Callable[[], str]) -> None:
    target = fresh_database()
    schema.upgrade(target)
    assert pyxp_versions(target) == [HEAD]
    assert not table_exists(target, "public.alembic_version")
    owner, acl = rows(target, "SELECT pg_get_userbyid(relowner)::text, relacl::text FROM pg_class "
                              "WHERE oid = 'pyxp.alembic_version'::regclass")[0]
    assert owner == "pyxp_owner"
    assert "pyxp_reader=r/pyxp_owner" in acl
    assert "pyxp_writer" not in acl


def test_pyxp_installs_into_a_database_that_has_an_application_history(
        fresh_database: Callable[[], str], app: Callable[[str], Config]) -> None:
    """The application migrated first: `pyxp db upgrade` neither fails on nor reports its revision."""
    target = fresh_database()
    command.upgrade(app(target), "app_rev_1")
    assert app_versions(target) == ["app_rev_1"]
    assert current_json(target)["revision"] is None, "the application's revision is not pyxp's"

    assert "migrated empty database -> " in cli(target, "db", "upgrade").stdout
    current = current_json(target)
    assert (current["revision"], current["up_to_date"]) == (HEAD, True)
    assert current["active_ruleset"] == {"name": "winstory", "version": 1}
    assert app_versions(target) == ["app_rev_1"]
    assert pyxp_versions(target) == [HEAD]
    assert "already at revision" in cli(target, "db", "upgrade").stdout

    command.upgrade(app(target), "head")  # the application goes on migrating, unaware of pyxp
    assert app_versions(target) == ["app_rev_2"]
    assert rows(target, "SELECT count(*) FROM public.app_things") == [(0,)]
    assert current_json(target)["revision"] == HEAD
    assert pyxp_versions(target) == [HEAD]


def test_the_application_migrates_after_pyxp(fresh_database: Callable[[], str],
                                             app: Callable[[str], Config]) -> None:
    """The reverse order: pyxp first, then the application creates public.alembic_version."""
    target = fresh_database()
    cli(target, "db", "upgrade")
    command.upgrade(app(target), "head")  # would fail on pyxp's row if it were in public
    assert app_versions(target) == ["app_rev_2"]
    assert current_json(target)["revision"] == HEAD

    command.downgrade(app(target), "app_rev_1")
    assert app_versions(target) == ["app_rev_1"]
    assert "already at revision" in cli(target, "db", "upgrade").stdout
    assert app_versions(target) == ["app_rev_1"]
    assert pyxp_versions(target) == [HEAD]


def test_an_application_revision_named_like_a_pyxp_revision_is_left_alone(
        fresh_database: Callable[[], str]) -> None:
    """Without the pyxp schema, public.alembic_version is the application's, whatever it holds."""
    target = fresh_database()
    stamp_by_hand(target, "0001")
    assert schema.current_revision(target) is None
    schema.upgrade(target)
    assert app_versions(target) == ["0001"]
    assert pyxp_versions(target) == [HEAD]
    assert schema.current_revision(target) == HEAD


def test_alembic_commands_on_pyxp_see_only_pyxp_history(fresh_database: Callable[[], str]) -> None:
    """Plain alembic commands run through the same env.py: `current` shows pyxp's revision."""
    target = fresh_database()
    stamp_by_hand(target, "app_rev_1")
    schema.upgrade(target)
    config = schema.alembic_config(target)
    config.stdout = io.StringIO()
    command.current(config)
    out = config.stdout.getvalue()
    assert HEAD in out and "app_rev_1" not in out


# --------------------------------------------------------------------------- up, down, up


def test_upgrade_downgrade_upgrade_beside_an_application(
        fresh_database: Callable[[], str], app: Callable[[str], Config]) -> None:
    target = fresh_database()
    command.upgrade(app(target), "head")
    schema.upgrade(target)

    schema.downgrade(target)  # to base: drops schema pyxp, its history with it
    assert rows(target, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pyxp'") == [(0,)]
    assert schema.current_revision(target) is None
    assert current_json(target)["revision"] is None
    assert app_versions(target) == ["app_rev_2"]

    schema.upgrade(target)
    assert schema.current_revision(target) == HEAD
    assert pyxp_versions(target) == [HEAD]
    assert app_versions(target) == ["app_rev_2"]
    assert rows(target, "SELECT count(*) FROM pyxp.audit()") == [(0,)]


def test_each_step_down_the_chain_records_its_revision(fresh_database: Callable[[], str]) -> None:
    """Down one revision at a time from head: pyxp.alembic_version follows, until the schema goes."""
    target = fresh_database()
    stamp_by_hand(target, "app_rev_1")
    schema.upgrade(target)
    chain = []  # head first
    revision = schema._script_directory().get_revision(HEAD)
    while revision is not None:
        chain.append(revision.revision)
        revision = schema._script_directory().get_revision(revision.down_revision) \
            if revision.down_revision else None
    for below in [*chain[1:], None]:
        schema.downgrade(target, below or "base")
        assert schema.current_revision(target) == below
        if below is not None:
            assert pyxp_versions(target) == [below]
        assert app_versions(target) == ["app_rev_1"]
    for revision_id in reversed(chain):
        schema.upgrade(target, revision_id, activate_default=False)
        assert pyxp_versions(target) == [revision_id]
    assert app_versions(target) == ["app_rev_1"]


# --------------------------------------------------------------------------- legacy installs


@pytest.mark.parametrize("app_rows", [(), ("app_rev_1",)], ids=["alone", "beside-an-app-row"])
def test_a_legacy_install_is_moved_on_upgrade_and_only_its_row(
        fresh_database: Callable[[], str], app_rows: tuple[str, ...]) -> None:
    target = fresh_database()
    make_legacy(target, *app_rows)
    assert schema.current_revision(target) == "0001", "a legacy install still reports its revision"
    assert current_json(target)["revision"] == "0001"

    cli(target, "db", "upgrade")

    assert pyxp_versions(target) == [HEAD]
    assert schema.current_revision(target) == HEAD
    if app_rows:
        assert app_versions(target) == list(app_rows)
    else:
        assert not table_exists(target, "public.alembic_version"), "emptied by the move: dropped"
    assert rows(target, "SELECT pg_get_userbyid(relowner)::text FROM pg_class "
                        "WHERE oid = 'pyxp.alembic_version'::regclass") == [("pyxp_owner",)]
    assert rows(target, "SELECT has_table_privilege('pyxp_reader', 'pyxp.alembic_version', 'SELECT')") \
        == [(True,)]


def test_a_legacy_install_then_the_application_migrates(
        fresh_database: Callable[[], str], app: Callable[[str], Config]) -> None:
    """Before the move the application's alembic would refuse the foreign row; after it, it works."""
    target = fresh_database()
    make_legacy(target)
    schema.upgrade(target)
    command.upgrade(app(target), "head")
    assert app_versions(target) == ["app_rev_2"]
    assert schema.current_revision(target) == HEAD


def test_a_legacy_install_downgraded_to_base_leaves_the_application_row(
        fresh_database: Callable[[], str]) -> None:
    target = fresh_database()
    make_legacy(target, "app_rev_1")
    schema.downgrade(target)
    assert schema.current_revision(target) is None
    assert app_versions(target) == ["app_rev_1"]
    schema.upgrade(target)
    assert schema.current_revision(target) == HEAD
    assert app_versions(target) == ["app_rev_1"]


# --------------------------------------------------------------------------- reading the revision


@pytest.fixture
def reader_login(conninfo: str) -> Iterator[str]:
    """A LOGIN role (unique name) that is only a member of pyxp_reader."""
    name = f"reader_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pyxp_reader").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_db_current_works_as_pyxp_reader(conninfo: str, reader_login: str) -> None:
    as_reader = make_conninfo(conninfo, user=reader_login)
    current = current_json(as_reader)
    assert current["revision"] == HEAD
    assert current["up_to_date"] is True
    assert current["active_ruleset"]["name"] == "winstory"
    assert schema.current_revision(as_reader) == HEAD
