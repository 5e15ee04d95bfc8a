"""Alembic environment for pyxp: plain SQL revisions on a psycopg 3 connection.

The database is the one given by the caller (``pyxp db upgrade`` passes its
conninfo in ``config.attributes["conninfo"]``), else PYXP_DATABASE_URL, else
libpq's environment and defaults. The version table stays in ``public`` so
that downgrading to base can drop the whole ``pyxp`` schema.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pyxp.database import configured_conninfo

config = context.config
conninfo: str = config.attributes.get("conninfo") or configured_conninfo()

if context.is_offline_mode():
    raise SystemExit("pyxp migrations run online only: they execute frozen SQL files on a connection")

engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
